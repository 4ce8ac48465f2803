"""The share of in-distribution scans every out-of-distribution threshold is fitted to let pass.

Each OOD score (Mahalanobis on pooled features, `mahalanobis`; a score from a model's own outputs,
`output_scores`) sets its threshold at this quantile of its validation scans' scores, so a stated fraction of
scans like the training data pass and everything above it is flagged.
"""

DEFAULT_TPR = 0.95
