"""Synthetic-but-anatomical demo data (real MRI templates, simulated lesions) and the end-to-end demo."""
