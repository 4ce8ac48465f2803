"""`tumor-edge batch`: the runtime's one prediction path inside Ray Data actors, for archives past one machine.

`scorer` lists SOURCE with each input's identity and is the per-scan function (open the bundle once; inputs in,
`classify --csv` rows out) that a Ray actor or a Spark executor (`spark`) calls; `store` is the RESULTS folder
(atomic Parquet parts, resume, dedupe); `job` feeds Ray and drains it; `commands` is the CLI. Nothing here imports
Ray until a job runs.
"""
