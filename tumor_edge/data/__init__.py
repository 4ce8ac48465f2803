"""Dataset folders: discovery, checks, splits, duplicates, pixels for the model; no TensorFlow."""
