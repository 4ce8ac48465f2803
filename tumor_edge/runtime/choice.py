"""The device picks the file it runs, by measurement.

Which engine and precision is fastest depends on the CPU and on the model's size, and cannot be known when the
bundle is made (measured on one AMD Zen 5: at 299 px onnxruntime int8 ran 0.80x LiteRT int8's time, at 96 px
2.0x). So a device times every model file it could run and keeps the fastest:

- candidates: the bundle's listed files that are present here, whose engine is installed, and whose parity
  verdict allows them (pass; or "not proven" with top-1 agreement at least the export's minimum; a file
  without a recorded verdict is allowed, a failed one never);
- each is loaded as `classify` loads it (same options, same thread count) and run on one generated reference
  image at batch 1: warm-up runs, then timed runs for its share of a few seconds; its median (p50) is kept;
- the choice (file, engine, threads, every p50) is recorded in the device's cache, outside the bundle, keyed by
  the bundle's model hashes, the machine (CPU model, ISA, engine versions) and the thread count. The record
  carries a sha256 of its own content and is checked before use, like every cache entry: a damaged or edited
  record, or one whose file is no longer a candidate, is ignored and measured again.

`verify` measures and prints the choice; the first `classify`/`serve` of a bundle measures when nothing is
recorded; `--model-file` (or `model_file=`) overrides it. `TUMOR_EDGE_NO_MEASURE=1` keeps the format table's
static order (no timing), e.g. for a one-shot run where loading every file would cost more than it saves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import BundleMetadata, is_optimized_name, member_path
from tumor_edge.contracts.formats import DEFAULT_MODEL_PREFERENCE
from tumor_edge.errors import TumorEdgeError
from tumor_edge.runtime.backends.options import BackendOptions
from tumor_edge.runtime.cache import cache_enabled, cache_root

log = logging.getLogger("tumor_edge.runtime")

NO_MEASURE_ENV = "TUMOR_EDGE_NO_MEASURE"
CHOICES_DIR = "choices"
BUDGET_S = 3.0  # all candidates together: "a few seconds"
WARMUP_RUNS = 1
MIN_RUNS = 3
MAX_RUNS = 200
RECORD_VERSION = 1
DEFAULT_MIN_AGREEMENT = 0.99  # when the bundle's parity record names none


@dataclass(frozen=True)
class EngineChoice:
    """The file this device runs for a bundle, and the measurements that chose it."""

    file: str
    engine: str
    threads: int | None  # None: the engine's default
    p50_ms: dict[str, float]  # every candidate's median latency, batch 1
    measured_at: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # listed files not timed, and why

    def describe(self) -> str:
        others = ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(self.p50_ms.items(), key=lambda kv: kv[1]))
        threads = self.threads if self.threads is not None else "default"
        return f"{self.file} ({self.engine}, {threads} threads; p50 batch 1: {others})"


def bundle_key(metadata: BundleMetadata) -> str:
    """The bundle's identity for a choice: the names and sha256s of its model files."""
    text = "\n".join(f"{name} {entry.sha256}" for name, entry in sorted(metadata.models.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def machine_key() -> dict[str, str]:
    """What the fastest file depends on besides the bundle: the CPU model and ISA, the engines' versions.

    Read on every use of a bundle without --model-file, so kept off the cold-start bill: the versions come from the
    installed distributions' folder names (importlib.metadata alone costs ~18 ms CPU to import), once a process."""
    from tumor_edge.machine import _cpuinfo, cpu_isa, cpu_model

    key = {"machine": platform.machine().lower(), "cpu": cpu_model(_cpuinfo()), "isa": cpu_isa()}
    for package in ("onnxruntime", "ai_edge_litert"):
        key[package] = installed_version(package)
    return key


def installed_version(distribution: str) -> str:
    """The version in the first `<distribution>-<version>.dist-info` folder on sys.path, else "absent"."""
    for entry in sys.path:
        try:
            found = sorted(Path(entry or ".").glob(f"{distribution}-*.dist-info"))
        except OSError:
            continue
        if found:
            return found[0].name[len(distribution) + 1:-len(".dist-info")]
    return "absent"


def record_path(metadata: BundleMetadata, options: BackendOptions | None = None) -> Path:
    machine = machine_key()
    digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    threads = (options.threads if options else None) or "default"
    return cache_root(options) / CHOICES_DIR / f"{machine['machine']}-{machine['isa']}-{digest}" / \
        f"{bundle_key(metadata)}-t{threads}.json"


def allowed_by_parity(name: str, metadata: BundleMetadata) -> str | None:
    """Why the export's parity verdict rules this file out, or None when it may run."""
    entry = metadata.models[name]
    parity = metadata.metrics.get("parity") if isinstance(metadata.metrics.get("parity"), dict) else {}
    row = (parity.get("files") or {}).get(name) or {}
    verdict = entry.extra.get("parity", row.get("verdict"))
    if verdict in (None, "pass"):
        return None
    if verdict == "not proven":
        minimum = (parity.get("thresholds") or {}).get("min_agreement", DEFAULT_MIN_AGREEMENT)
        agreement = row.get("agreement")
        if isinstance(agreement, (int, float)) and agreement >= minimum - 1e-12:
            return None
        return f"parity not proven and top-1 agreement {agreement} under {minimum}"
    return f"parity verdict {verdict!r}"


def candidates(bundle_dir: Path, metadata: BundleMetadata) -> tuple[list[str], dict[str, str]]:
    """(files this device may run, in the format table's static order; {file: why not} for the rest)."""
    from tumor_edge.runtime.backends import engine_of

    order = {name: i for i, name in enumerate(DEFAULT_MODEL_PREFERENCE)}
    listed = [name for name in metadata.models if not is_optimized_name(name)]  # no 0.1 twins
    names = sorted(listed, key=lambda n: order.get(n, len(order)))
    ok, skipped = [], {}
    for name in names:
        try:
            path = member_path(bundle_dir, name)
            if not path.is_file():
                skipped[name] = "not in this copy of the bundle"
                continue
            engine_of(path)
        except TumorEdgeError as err:
            skipped[name] = err.reason
            continue
        why = allowed_by_parity(name, metadata)
        if why:
            skipped[name] = why
        else:
            ok.append(name)
    return ok, skipped


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def recorded_choices(bundle_dir: Path, metadata: BundleMetadata) -> list[EngineChoice]:
    """Every intact choice recorded on this machine for this bundle, one per thread count (for `env`)."""
    folder = record_path(metadata).parent
    found = []
    for path in sorted(folder.glob(f"{bundle_key(metadata)}-t*.json")) if folder.is_dir() else []:
        choice = _read(path, bundle_dir, metadata)
        if choice is not None:
            found.append(choice)
    return found


def recorded_choice(bundle_dir: Path, metadata: BundleMetadata, options: BackendOptions | None = None,
                    allowed: list[str] | None = None) -> EngineChoice | None:
    """The choice recorded on this device for this bundle, machine and thread count, if it is intact and its
    file may still run; None otherwise (then measure again)."""
    return _read(record_path(metadata, options), bundle_dir, metadata, allowed)


def _read(path: Path, bundle_dir: Path, metadata: BundleMetadata, allowed: list[str] | None = None
          ) -> EngineChoice | None:
    """A recorded choice, checked: its own sha256, this bundle's key, a file that may still run here (`allowed`:
    the candidates, when the caller has them already)."""
    try:
        data = json.loads(path.read_text())
        body, digest = data["choice"], data["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if digest != _digest(body) or data.get("version") != RECORD_VERSION or data.get("bundle") != bundle_key(metadata):
        log.info("ignoring a damaged or foreign engine-choice record %s", path)
        return None
    try:
        choice = EngineChoice(**body)
    except TypeError:
        return None
    if allowed is None:
        allowed, _ = candidates(Path(bundle_dir), metadata)
    return choice if choice.file in allowed else None


def _write(path: Path, choice: EngineChoice, metadata: BundleMetadata) -> None:
    body = asdict(choice)
    data = {"version": RECORD_VERSION, "bundle": bundle_key(metadata), "choice": body, "sha256": _digest(body)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as err:  # a read-only home only costs measuring again next time
        log.info("could not record the engine choice in %s: %s", path, err)


def time_file(bundle_dir: Path, name: str, metadata: BundleMetadata, options: BackendOptions,
              seconds: float) -> tuple[float, str]:
    """(p50 ms at batch 1, engine) of one file, loaded as classify loads it, on one reference image."""
    import numpy as np

    from tumor_edge.runtime.classifier import Classifier
    from tumor_edge.runtime.reference import brain_blobs

    clf = Classifier.from_bundle(bundle_dir, model_file=name, options=options)
    spec = metadata.preprocessing
    image = brain_blobs(1, 1, spec.height, spec.width)
    for _ in range(WARMUP_RUNS):
        clf.infer(image)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_RUNS or (time.perf_counter() < deadline and len(times) < MAX_RUNS):
        t0 = time.perf_counter()
        clf.infer(image)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)), clf.backend.name


def measure_choice(bundle_dir: str | Path, metadata: BundleMetadata | None = None,
                   options: BackendOptions | None = None, budget_s: float = BUDGET_S,
                   record: bool = True) -> EngineChoice:
    """Time every candidate (its share of `budget_s`) and record the fastest; a file that fails to load or run
    is skipped with its reason. Raises TumorEdgeError when no file can run here."""
    bundle_dir = Path(bundle_dir)
    metadata = metadata or BundleMetadata.read(bundle_dir)
    options = options or BackendOptions()
    allowed, skipped = candidates(bundle_dir, metadata)
    p50: dict[str, float] = {}
    engines: dict[str, str] = {}
    for name in allowed:
        try:
            p50[name], engines[name] = time_file(bundle_dir, name, metadata, options, budget_s / len(allowed))
        except TumorEdgeError as err:
            skipped[name] = err.reason
    if not p50:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "it lists no models"
        raise TumorEdgeError(f"no model file of this bundle can run on this device ({reasons})", bundle_dir)
    best = min(p50, key=p50.get)
    choice = EngineChoice(best, engines[best], options.threads, {k: round(v, 4) for k, v in p50.items()},
                          time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine_key(), skipped)
    if record and cache_enabled(options):
        _write(record_path(metadata, options), choice, metadata)
    return choice


def pick_model(bundle_dir: str | Path, metadata: BundleMetadata, options: BackendOptions | None = None) -> str:
    """The file `classify`/`serve`/`bench` run when told only the bundle: the recorded choice; else, with more
    than one candidate, a measurement (recorded); else the format table's static order among the candidates."""
    bundle_dir = Path(bundle_dir)
    options = options or BackendOptions()
    allowed, _ = candidates(bundle_dir, metadata)
    if len(allowed) <= 1 or os.environ.get(NO_MEASURE_ENV, "") not in ("", "0") or not cache_enabled(options):
        return allowed[0] if allowed else metadata.default_model()
    choice = recorded_choice(bundle_dir, metadata, options, allowed)
    if choice is None:
        try:
            choice = measure_choice(bundle_dir, metadata, options)
        except TumorEdgeError as err:
            log.info("could not measure the bundle's files (%s); using the static order", err)
            return allowed[0]
    return choice.file


__all__ = ["EngineChoice", "allowed_by_parity", "bundle_key", "candidates", "measure_choice", "pick_model",
           "record_path", "recorded_choice", "recorded_choices"]
