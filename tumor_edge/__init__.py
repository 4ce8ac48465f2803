"""tumor-edge: brain-MRI tumour classifier from training to CPU/edge devices.

Research tool, not a diagnostic device. Importing this package is cheap and never pulls in TensorFlow.
"""

__version__ = "0.3.0"

RESEARCH_NOTICE = (
    "tumor-edge is a research tool, not a diagnostic device: its output must not be used for clinical decisions."
)
