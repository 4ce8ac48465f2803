"""`tumor-edge serve`: the runtime behind a small local HTTP API and a one-page web UI (Starlette + uvicorn, the
`serve` extra; never TensorFlow)."""
