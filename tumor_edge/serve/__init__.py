"""`tumor-edge serve`: the runtime behind a small local HTTP API and a one-page web UI (the `serve` extra).

Starlette + uvicorn, never TensorFlow. Parts: `config` (options and the bind rule), `admission` (bounded
concurrency), `upload` (bounded body reading, multipart in memory), `inference` (bytes -> the same JSON as
`classify --json`), `app` (routes and JSON errors), `openapi`, `page` (the HTML), `commands` (the CLI).
"""
