"""`tumor-edge batch` on Ray Data: list the inputs, skip those RESULTS already holds, score the rest in a pool of
actors (each opens the bundle once, with as many engine threads as Ray gave it CPUs), and write each block of rows
as it arrives as one Parquet part. Ray schedules the actors, retries tasks and spans machines; this module only
feeds and drains it.

No cluster named (`--address`, `RAY_ADDRESS`): a local Ray instance bound to 127.0.0.1. Ray on Linux binds the
machine's network address even when told 127.0.0.1 (it "resolves" loopback away), unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 puts it in its single-machine mode, which binds loopback; that mode is
read when Ray is imported, so it is set before the import.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import click

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.batch.scorer import IDENTITY, Scorer, ScoreSettings, fetch_from, list_inputs
from tumor_edge.batch.store import Store
from tumor_edge.errors import TumorEdgeError, first_line
from tumor_edge.runtime import BackendOptions, Classifier

LOOPBACK_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
SUMMARY_FILE = "_summary.json"


@dataclass(frozen=True)
class JobConfig:
    """A batch job: SOURCE, RESULTS, how to score (`settings`), and on what: `address` (None: local Ray),
    `workers` actors of `cpus` CPUs each, `rows_per_task` inputs a task."""

    source: str
    out: str
    settings: ScoreSettings
    address: str | None = None
    workers: int = 2
    cpus: float = 1.0
    rows_per_task: int = 64
    csv: bool = False
    force: bool = False
    progress: bool | None = None


class RayWorker:
    """A Ray Data actor: one verified bundle, its engine's threads set to the CPUs Ray assigned this actor."""

    def __init__(self, settings: ScoreSettings, filesystem=None):
        import ray

        context = ray.get_runtime_context()
        threads = max(1, math.floor(context.get_assigned_resources().get("CPU", 1.0)))
        self.scorer = Scorer(replace(settings, threads=threads))
        # the node as `ray status` names it, and the threads its engine runs (per-worker figures group by this)
        self.scorer.worker = f"node {context.get_node_id()[:8]} pid {os.getpid()} threads {threads}"
        self.fetch = fetch_from(filesystem) if filesystem is not None else None

    def __call__(self, batch):
        import pyarrow as pa

        return pa.Table.from_pylist(self.scorer.rows(batch.to_pylist(), self.fetch))


@dataclass
class Tally:
    """What the driver has seen of this run: inputs and failures so far, timings, per-worker busy time."""

    total: int
    started: float = field(default_factory=time.perf_counter)
    first: float | None = None
    first_inputs: int = 0
    last: float | None = None
    inputs: int = 0
    failed: int = 0
    rows: Counter = field(default_factory=Counter)
    busy: defaultdict = field(default_factory=lambda: defaultdict(float))

    def add(self, table) -> int:
        now = time.perf_counter()
        paths = table.column("input_path").to_pylist()
        errors = table.column("error").to_pylist()
        new = len(set(paths))
        self.failed += len({p for p, e in zip(paths, errors) if e})
        for worker, seconds in zip(table.column("worker").to_pylist(), table.column("seconds").to_pylist()):
            self.rows[worker] += 1
            self.busy[worker] += seconds
        if self.first is None:
            self.first, self.first_inputs = now, new
        self.last = now
        self.inputs += new
        return new

    def figures(self) -> dict:
        wall = (self.last or time.perf_counter()) - self.started
        steady = None
        if self.first is not None and self.last is not None and self.last > self.first:
            steady = (self.inputs - self.first_inputs) / (self.last - self.first)
        return {
            "inputs_scored": self.inputs, "failed": self.failed, "seconds": round(wall, 3),
            "first_result_s": None if self.first is None else round(self.first - self.started, 3),
            "scans_per_s": round(self.inputs / wall, 2) if wall > 0 else None,
            "scans_per_s_after_first_result": None if steady is None else round(steady, 2),
            "workers": {w: {"rows": n, "busy_s": round(self.busy[w], 3),
                            "rows_per_busy_s": round(n / self.busy[w], 2) if self.busy[w] else None}
                        for w, n in sorted(self.rows.items())},
        }


def run(config: JobConfig) -> int:
    """Run the job; the exit status (0 every input scored, 2 some inputs failed)."""
    tally_start = time.perf_counter()
    s = config.settings
    # The bundle opened here once, as an actor will (sha256s, shapes, outputs; the device's file choice measured and
    # cached for the actors of this machine): a bad bundle is one line now, not an actor Ray restarts.
    Classifier.from_bundle(s.model, model_file=s.model_file, options=BackendOptions(threads=1))
    store = Store.open(config.out)
    store.claim({"source": config.source, "model": s.model, "model_file": s.model_file, "frames": s.frames,
                 "axis": s.axis, "slices": s.slices, "abstain": s.abstain}, config.force)
    records, filesystem = list_inputs(config.source)
    done = store.done()
    todo = [r for r in records if tuple(r[k] for k in IDENTITY) not in done]
    click.echo(f"batch: {len(records)} inputs in {config.source}, {len(records) - len(todo)} already in "
               f"{config.out}, {len(todo)} to score", err=True)
    tally = Tally(len(todo), started=tally_start)
    if todo:
        _score(config, todo, filesystem, store, tally)
    return _finish(config, store, tally, [r["input_path"] for r in records])


def _score(config: JobConfig, todo: list[dict], filesystem, store: Store, tally: Tally) -> None:
    ray = _connect(config)
    try:
        import ray.data
        from ray.data import ActorPoolStrategy, DataContext

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and progress notes: ours count scans
        DataContext.get_current().enable_progress_bars = False
        blocks = max(1, math.ceil(len(todo) / config.rows_per_task))
        workers = max(1, min(config.workers, blocks))
        dataset = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
            RayWorker, batch_size=config.rows_per_task, batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers), num_cpus=config.cpus,
            fn_constructor_kwargs={"settings": config.settings, "filesystem": filesystem})
        with _Progress(tally, config.progress) as progress:
            try:
                for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    store.write(table)
                    progress.update(tally.add(table))
            except Exception as err:
                _raise_readable(err, tally, config.out)
    finally:
        ray.shutdown()


def _connect(config: JobConfig):
    """Ray, connected: to the named cluster, else to a new local instance on 127.0.0.1."""
    address = config.address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault(*LOOPBACK_ENV)
    import ray

    options = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(config.workers * config.cpus))
            ray.init(num_cpus=cpus, include_dashboard=False, **options)
    except Exception as err:  # an unreachable cluster, a refused token: one line
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise TumorEdgeError(f"cannot start or reach {where} ({type(err).__name__}: {first_line(err)})") from err
    return ray


def _raise_readable(err: Exception, tally: Tally, out: str) -> None:
    """A failed Ray job as one line: the tumor-edge error inside it (a bad bundle) as is, else what Ray said,
    with what was saved."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, TumorEdgeError):
            raise cause from None
        cause = getattr(cause, "cause", None) or cause.__cause__
    raise TumorEdgeError(f"the Ray job stopped ({type(err).__name__}: {first_line(err)}); {tally.inputs} inputs "
                         f"were saved in {out}: run the same command again to score the rest") from err


class _Progress:
    """A bar on a terminal; elsewhere (a log, CI) a line every few seconds."""

    EVERY_S = 5.0

    def __init__(self, tally: Tally, enabled: bool | None):
        self.tally = tally
        self.bar = None
        self.terminal = bool(enabled) or (enabled is None and sys.stderr.isatty())
        self.lines = enabled is None and not self.terminal  # --no-progress: neither
        self.said = time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.terminal:
            self.bar = click.progressbar(length=self.tally.total, label="scoring", file=sys.stderr, show_pos=True,
                                         show_eta=True, width=30)
            self.bar.__enter__()
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self.said >= self.EVERY_S:
            self.said = time.perf_counter()
            click.echo(f"batch: {self.tally.inputs}/{self.tally.total} scored, {self.tally.failed} failed", err=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _finish(config: JobConfig, store: Store, tally: Tally, current: list[str]) -> int:
    """The summary (stderr, RESULTS/_summary.json) and the CSV, of the inputs SOURCE has now."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n_inputs = len(current)
    table = store.read()
    if table is not None:  # rows of files since removed from SOURCE stay in the parts, not in the figures
        table = table.filter(pc.is_in(table.column("input_path"), value_set=pa.array(current, pa.string())))
    inputs = set() if table is None else set(table.column("input_path").to_pylist())
    failed = set() if table is None else {p for p, e in zip(table.column("input_path").to_pylist(),
                                                            table.column("error").to_pylist()) if e}
    figures = {"inputs": n_inputs, "inputs_with_rows": len(inputs), "inputs_failed": len(failed),
               "rows": 0 if table is None else table.num_rows, "this_run": tally.figures()}
    store.write_bytes(SUMMARY_FILE, json.dumps(figures, indent=1).encode())
    if config.csv and table is not None:
        click.echo(f"batch: CSV in {store.write_csv(table)}", err=True)
    run_figures = figures["this_run"]
    click.echo(f"batch: {n_inputs} inputs, {len(failed)} failed; this run scored {run_figures['inputs_scored']} in "
               f"{run_figures['seconds']} s ({run_figures['scans_per_s']} scans/s with start-up, "
               f"{run_figures['scans_per_s_after_first_result']} after the first result)", err=True)
    for worker, w in run_figures["workers"].items():
        click.echo(f"  worker {worker}: {w['rows']} rows, busy {w['busy_s']} s, {w['rows_per_busy_s']} rows/s",
                   err=True)
    click.echo(f"note: {RESEARCH_NOTICE}", err=True)
    return 2 if failed else 0
