"""The one way to run work in another process (tumor_edge/worker.py): jobs in order in one child that keeps its
state, errors back as their own class in one line, a deadline and a memory cap enforced by killing the child for
real, a dead child reported in one line, logs and printed lines passed through. Plain Python jobs: each test
costs one or two interpreter starts."""

from __future__ import annotations

import logging
import os
import sys
import time

import pytest

from tumor_edge.errors import DatasetError, ModelError
from tumor_edge.worker import ChildFailed, Inline, Worker, run_elsewhere

_STATE: dict[str, int] = {}


def remember(key: str, value: int) -> int:
    """A job that keeps something in its process, as the export's worker keeps the loaded model."""
    _STATE[key] = value
    return os.getpid()


def recall(key: str) -> tuple[int, int | None]:
    return os.getpid(), _STATE.get(key)


def fail_typed(path: str) -> None:
    raise ModelError("this model cannot be converted", path)


def fail_builtin() -> None:
    raise ZeroDivisionError("division by zero\nsecond line")


class LocalError(Exception):
    """A class the parent has loaded under another module name (the test module is `tests.test_worker` in the
    child too, so it rebuilds)."""


def fail_foreign() -> None:
    import types

    module = types.ModuleType("not_loaded_in_the_parent")
    cls = type("FromAnotherLibrary", (Exception,), {"__module__": module.__name__})
    raise cls("a converter's error\nwith a long trace")


def die() -> None:
    os._exit(9)  # as the system's out-of-memory killer would end it


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def allocate(step_mb: int, steps: int) -> int:
    """Touch `step_mb` MiB at a time (every page written, so it is resident), holding all of it."""
    held = []
    for _ in range(steps):
        held.append(bytearray(b"\x01") * (step_mb << 20))
        time.sleep(0.05)
    return len(held)


def say(message: str) -> int:
    logging.getLogger("tumor_edge.export").info(message)
    print(f"printed: {message}", flush=True)
    return 1


def environment(name: str) -> str | None:
    return os.environ.get(name)


def test_jobs_share_one_process_that_keeps_state_and_run_in_order():
    with Worker() as worker:
        first = worker.submit(remember, "model", 42)
        second = worker.submit(recall, "model")  # queued before the first finished
        pid = first.wait()
        assert second.wait() == (pid, 42)
        assert pid != os.getpid() and worker.pid == pid
        assert first.seconds >= 0.0 and first.cpu_seconds >= 0.0


def _worker_call(target, *args):
    with Worker() as worker:
        return worker.call(target, *args)


RUNNERS = {
    "worker": _worker_call,
    "one job": run_elsewhere,
    "inline": lambda target, *args: Inline().call(target, *args),
}


@pytest.mark.parametrize("runner", RUNNERS.values(), ids=RUNNERS.keys())
def test_a_value_and_a_typed_error_come_back(runner):
    assert runner(recall, "nothing")[1] is None
    with pytest.raises(ModelError, match="^/models/x.keras: this model cannot be converted$") as typed:
        runner(fail_typed, "/models/x.keras")
    assert str(typed.value.path) == "/models/x.keras"


@pytest.mark.parametrize("runner", [RUNNERS["worker"], run_elsewhere], ids=["worker", "one job"])
def test_other_errors_keep_their_class_with_one_line(runner):
    with pytest.raises(ZeroDivisionError) as builtin:
        runner(fail_builtin)
    assert str(builtin.value) == "division by zero"
    with pytest.raises(ChildFailed, match="^FromAnotherLibrary: a converter's error$"):
        runner(fail_foreign)  # its module is not loaded here: the class name stays in the line


def test_the_worker_goes_on_after_an_error():
    with Worker() as worker:
        before = worker.call(remember, "after", 1)
        with pytest.raises(DatasetError):
            worker.call(_dataset_error)
        assert worker.call(recall, "after") == (before, 1)


def _dataset_error() -> None:
    raise DatasetError("no images here", "/x")


def test_a_dead_child_fails_its_job_and_those_queued_behind_it_and_the_next_gets_a_fresh_one():
    with Worker("tensorflow") as worker:
        before = worker.call(remember, "x", 1)
        dying, behind = worker.submit(die), worker.submit(recall, "x")
        with pytest.raises(ChildFailed, match="^the tensorflow process died while running die .*exit code 9"):
            dying.wait()
        with pytest.raises(ChildFailed, match="^recall not run: "):
            behind.wait()
        pid, kept = worker.call(recall, "x")
        assert pid != before and kept is None  # a fresh process: what the dead one held is gone


def _only_in(pid: int) -> str:
    if os.getpid() != pid:
        raise ImportError("this result cannot be loaded outside its process")
    return "loaded"


class _LoadsOnlyInTheChild:
    def __reduce__(self):
        return _only_in, (os.getpid(),)


def result_the_parent_cannot_load() -> _LoadsOnlyInTheChild:
    return _LoadsOnlyInTheChild()


def test_a_result_this_process_cannot_load_fails_its_job_in_one_line_instead_of_hanging():
    with Worker() as worker:
        with pytest.raises(ChildFailed, match="^result_the_parent_cannot_load failed in the worker process: this "
                                              "result cannot be loaded outside its process$"):
            worker.call(result_the_parent_cannot_load, deadline=60)
        assert worker.call(sleep, 0) == "woke"


def test_a_job_past_its_deadline_is_killed():
    with Worker() as worker:
        started = time.monotonic()
        with pytest.raises(ChildFailed, match="^sleep ran past its deadline of 1 s and was stopped$"):
            worker.call(sleep, 60, deadline=1)
        assert time.monotonic() - started < 30
        assert worker.pid is None  # killed, not left sleeping
        assert worker.call(sleep, 0, deadline=30) == "woke"  # a fresh child for the next job


def test_a_child_past_its_memory_cap_is_killed():
    started = time.monotonic()
    with pytest.raises(ChildFailed, match=r"^allocate went past the memory cap of 200 MiB \(\d+ MiB resident\)"):
        run_elsewhere(allocate, 25, 80, memory_mb=200)  # 2 GiB if nothing stopped it
    assert time.monotonic() - started < 60
    assert run_elsewhere(allocate, 10, 2, memory_mb=400) == 2  # under the cap: runs to its end


def test_logs_and_printed_lines_reach_the_parent(caplog, capfd):
    with caplog.at_level(logging.INFO, logger="tumor_edge.export"), Worker() as worker:
        worker.call(say, "hello from the child")
    assert "hello from the child" in [r.getMessage() for r in caplog.records if r.name == "tumor_edge.export"]
    assert "printed: hello from the child" in capfd.readouterr().out


def test_the_environment_is_set_before_the_job_and_a_named_target_loads_only_in_the_child():
    assert run_elsewhere(environment, "TUMOR_EDGE_WORKER_TEST", env={"TUMOR_EDGE_WORKER_TEST": "jax"}) == "jax"
    assert "colorsys" not in sys.modules or pytest.skip("colorsys already loaded here")
    assert run_elsewhere("colorsys:rgb_to_hsv", 1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" not in sys.modules


def _pid_of_a_grandchild() -> tuple[int, int]:
    return os.getpid(), run_elsewhere(os.getpid)


def test_a_job_may_run_work_in_a_child_of_its_own():
    """The demo runs export in a child, and export runs its converters in a TensorFlow child: a worker's child
    must be allowed children (a daemonic process is not, and its dispatch thread died on the refusal, leaving the
    job waiting forever)."""
    child, grandchild = run_elsewhere(_pid_of_a_grandchild, deadline=60)
    assert len({os.getpid(), child, grandchild}) == 3


FORGOTTEN = """
import os
from tumor_edge.worker import Worker
if __name__ == "__main__":
    worker = Worker("forgotten")  # never closed
    print(worker.call(os.getpid) != os.getpid())
"""


def test_a_worker_left_open_ends_with_the_interpreter(tmp_path):
    """Its child is not daemonic (it may have children), so multiprocessing waits for it at exit: the worker must
    end it first, or a program that forgot `close` would never exit."""
    import subprocess

    script = tmp_path / "forgotten.py"
    script.write_text(FORGOTTEN)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr
