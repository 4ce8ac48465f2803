"""Dataset folders: discovery, checks, splits, duplicate detection, and loading pixels for the model.

No TensorFlow here: `tumor-edge data check` and export parity use it too.
"""
