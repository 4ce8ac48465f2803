"""`tumor-edge batch`: the runtime's one prediction path inside Ray Data actors (or Spark executors), for archives
past one machine. Nothing here imports Ray until a job runs."""
