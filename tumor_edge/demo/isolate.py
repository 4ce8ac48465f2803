"""Run one demo stage in a fresh Python process, so what it holds is returned to the system when it ends.

TensorFlow keeps what training and conversion allocated until the process exits (its allocator and the C
heap do not shrink), and the stages ran one after another in one process: the demo's 0.1.0 process peaked
at 11.3 GB. In a child per heavy stage, the demo's peak is the largest stage's, not their sum, and the parent
never imports TensorFlow. The child inherits stdout/stderr and the environment; its result (a JSON-able
dict) and any error come back as if the stage had run here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tumor_edge.errors import TumorEdgeError

T = TypeVar("T")


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a spawned process (fn must be importable by name; args picklable); its error re-raised."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    sys.stdout.flush()
    sys.stderr.flush()
    context = multiprocessing.get_context("spawn")  # fork would copy this process and its threads
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool as err:
            raise TumorEdgeError(f"the process running {getattr(fn, '__name__', 'a stage')} died (killed for "
                                 "memory?); rerun to resume from the last complete stage") from err
