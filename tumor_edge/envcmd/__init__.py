"""`tumor-edge env` and the extras registry: what is installed, for bug reports and missing-extra messages."""
