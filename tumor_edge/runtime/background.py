"""One function run on a second thread while the caller goes on: the integrity checks of a model load.

Hashing a 22 MB model (sha256) and checking a cache entry (CRC32) are ~20 ms each on a small CPU, and both
release the GIL while they digest, so they can run on the second core while onnxruntime builds its session on
the first. Whoever starts one must call `result()` before anything that depends on the check is used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Background:
    """`fn(*args)` on a daemon thread, started now. `result()` waits for it and returns its value, or raises what
    it raised (in the caller's thread, so a BundleIntegrityError reaches the caller as if called directly)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "tumor-edge-check"):
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as err:  # handed to the caller by result()
            self._error = err

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
