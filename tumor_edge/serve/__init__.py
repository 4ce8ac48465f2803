"""`tumor-edge serve`: the runtime behind a small local HTTP API and a one-page web UI (the `serve` extra).

Starlette + uvicorn, never TensorFlow. Parts: `config` (options and the bind rule), `hosts` (Host header and
cross-site checks), `admission` (bounded concurrency), `budget` (what one request may cost, and how its work
stops), `upload` (bounded body reading, multipart in memory), `inference` (bytes -> the same JSON as
`classify --json`), `app` (routes and JSON errors), `protocol` (the header timeout), `openapi`, `page` (the HTML),
`commands` (the CLI).
"""
