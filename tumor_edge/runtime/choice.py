"""The device picks the file it runs: only files it has checked, and among them the fastest by measurement.

Which engine and precision is fastest depends on the CPU and on the model's size, and cannot be known when the
bundle is made. Candidates are the bundle's files that are present, whose engine is installed, that are sound
(from the bundle's record alone) and that this device reproduces on the reference images; they are timed as
`classify` loads them, and the format table's preferred file stays unless another is faster by more than
NOISE_MARGIN. Results are recorded in this user's private records folder, keyed by the bundle's model hashes, the
machine and the thread count: a file that failed here is never a candidate again until the bundle changes, and a
damaged, edited or stale record is ignored and measured again. A bundle with no reference outputs keeps its files
as unchecked candidates. `TUMOR_EDGE_NO_MEASURE=1` keeps the format table's order (no timing). Callers pass an
`opener` (file name -> an object with `infer_outputs(pixels)` and `backend.name`), so this module never imports
the classifier that calls it.

The reference images are bit-exact on every machine: the only randomness is PCG64's raw 64-bit stream
(`random_raw`, fixed by the algorithm, unlike numpy's distribution methods), turned into floats by integer shifts;
images are drawn with +, -, *, / only (IEEE-754 rounds those identically everywhere; exp, sin or sqrt do not) and
rounded with `np.rint`. Export records each model's outputs on them (tumor_edge.export.reference).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import os
import platform
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import SCORES, BundleMetadata, ReferenceSet, member_path
from tumor_edge.contracts.formats import DEFAULT_MODEL_PREFERENCE, engine_versions
from tumor_edge.errors import BundleIntegrityError, ConfigError, TumorEdgeError
from tumor_edge.runtime.backends import BackendOptions, engine_row

log = logging.getLogger("tumor_edge.runtime")

Opener = Callable[[str], Any]

NO_MEASURE_ENV = "TUMOR_EDGE_NO_MEASURE"
CHOICES_DIR = "choices"
BUDGET_S = 3.0  # all candidates together: "a few seconds"
WARMUP_RUNS = 1
MIN_ROUNDS = 3
MAX_ROUNDS = 200
# A file the format table prefers stays the choice unless another's p50 is lower by more than this fraction: two
# medians of a few dozen batch-1 runs on a shared CPU differ by a few per cent with nothing else changed.
NOISE_MARGIN = 0.10
RECORD_VERSION = 2
UNCHECKED = "not checked: the bundle records no reference outputs"


@dataclass(frozen=True)
class Floor:
    """The smallest tolerance of one precision, and the measurement it comes from (verify says which)."""

    value: float
    source: str


# Largest probability difference two healthy CPUs may show on the same file, per precision: above the largest
# difference measured between CPUs of different kinds. fp32 kernels differ only in summation order; a device may
# compute an fp16 file in half precision (ARMv8.2-A FP16) where x86 computes it in float32; int8 kernels round
# differently between ISAs (VNNI, ARM dot products, AVX2's 16-bit pair sums).
FLOORS: dict[str, Floor] = {
    "fp32": Floor(1e-3, "x86-64 AVX-512 VNNI vs ARM64 (emulated Neoverse N1), 75 px InceptionV3, ONNX fp32: "
                        "max |dp| 3e-6"),
    "fp16": Floor(0.02, "x86-64 AVX-512 VNNI vs ARM64 (emulated Neoverse N1), 75 px InceptionV3, ONNX fp16: "
                        "max |dp| 0.015"),
    "int8": Floor(0.1, "x86-64 AVX-512 VNNI vs ARM64 (emulated Neoverse N1), 75 px InceptionV3: max |dp| 0.076 "
                       "(ONNX int8), 0.055 (TFLite int8)"),
}
# No tolerance exceeds this, whatever a file's recorded error: within it, every image whose recorded top-1 leads
# the runner-up by more than half the probability scale keeps its label on the device, and a device whose kernels
# saturate or permute moves a confident probability by more.
CAP = 0.25
# A device's own rounding is as large as the export machine's but independent: its largest error on the images
# exceeds the recorded one about half the time. The device may differ from the record by its own error plus the
# recorded one; this allows its own error twice the recorded size.
EFFECT_FACTOR = 3.0
# A reduced-precision file fails soundness when its disagreements with the fp32 file are this unlikely under the
# disagreement rate its parity record promises (one-sided binomial tail).
SOUNDNESS_ALPHA = 1e-3
CONFIDENCE_Z = 1.645  # one-sided 95 %: the upper bound of a parity record's disagreement rate
DEFAULT_MIN_AGREEMENT = 0.99  # when the bundle's parity record names none


def floor_for(precision: str) -> float:
    return FLOORS.get(precision, FLOORS["fp32"]).value


def _fp32_outputs(name: str, metadata: BundleMetadata) -> np.ndarray | None:
    """The recorded outputs of the bundle's fp32 file this file was made from: same format first, else any."""
    reference = metadata.reference
    own = metadata.models[name]
    fp32 = sorted((n for n, e in metadata.models.items() if e.precision == "fp32" and n in reference.outputs),
                  key=lambda n: metadata.models[n].format != own.format)
    return np.asarray(reference.outputs[fp32[0]], np.float64) if fp32 else None


def recorded_effect(name: str, metadata: BundleMetadata) -> float:
    """E: the largest difference between this file's recorded outputs and the fp32 file's (0 for fp32 files, and
    where either is not recorded)."""
    own = metadata.reference.outputs.get(name) if metadata.reference is not None else None
    fp32 = _fp32_outputs(name, metadata) if own is not None else None
    if metadata.models[name].precision == "fp32" or fp32 is None or np.shape(own) != fp32.shape:
        return 0.0
    effect = float(np.max(np.abs(np.asarray(own, np.float64) - fp32)))
    return effect if math.isfinite(effect) else CAP


def tolerance_for(name: str, metadata: BundleMetadata) -> float:
    """The largest probability difference accepted between this file's recorded outputs and this device's:
    min(CAP, max(floor, EFFECT_FACTOR * E)). The device's kernels may round as much as the export machine's did
    (E, its recorded difference from fp32), independently; the floor covers kernels of another kind; the cap
    keeps the limit below what a broken device shows, however large E is (soundness judges E)."""
    floor = floor_for(metadata.models[name].precision)  # every floor is under CAP: an fp32 file's limit is its floor
    return min(CAP, max(floor, EFFECT_FACTOR * recorded_effect(name, metadata)))


@dataclass(frozen=True)
class Check:
    """One file's check: passed, and the line that says why."""

    ok: bool
    line: str
    figures: dict


def reproduce(name: str, got: np.ndarray, metadata: BundleMetadata, tolerance: float | None = None) -> Check:
    """Does this device's `got` (probabilities on the reference images) reproduce the file's recorded outputs?"""
    reference = metadata.reference
    want = np.asarray(reference.outputs[name], np.float64)
    got = np.asarray(got, np.float64)
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf
    agree = int(np.sum(got.argmax(axis=1) == want.argmax(axis=1))) if got.shape == want.shape else 0
    limit = min(tolerance, CAP) if tolerance is not None else tolerance_for(name, metadata)
    ok = math.isfinite(diff) and diff <= limit
    line = f"{name}: top-1 agreement {agree}/{reference.count}, max |Δp| {diff:.2g} (limit {limit:g})"
    return Check(ok, line, {"agreement": agree / reference.count, "max_abs_diff": diff, "limit": limit})


def parity_row(name: str, metadata: BundleMetadata) -> tuple[dict, dict]:
    """(the bundle's parity record, this file's row of it); empty dicts when export recorded none."""
    parity = metadata.metrics.get("parity") if isinstance(metadata.metrics.get("parity"), dict) else {}
    row = (parity.get("files") or {}).get(name)
    return parity, row if isinstance(row, dict) else {}


def parity_refusal(name: str, metadata: BundleMetadata) -> str | None:
    """Why export's parity verdict rules this file out (failed; or not proven with a top-1 agreement under the
    required one), or None when it may run."""
    parity, row = parity_row(name, metadata)
    verdict = metadata.models[name].extra.get("parity", row.get("verdict"))
    if verdict in (None, "pass", "not checked"):  # not checked: export skipped parity, the soundness test stays
        return None
    if verdict == "not proven":
        minimum = (parity.get("thresholds") or {}).get("min_agreement", DEFAULT_MIN_AGREEMENT)
        agreement = row.get("agreement")
        if isinstance(agreement, (int, float)) and agreement >= minimum - 1e-12:
            return None
        return f"export's parity was not proven and its top-1 agreement {agreement} is under {minimum}"
    return f"export's parity verdict is {verdict!r}: never run"


def promised_disagreement(name: str, metadata: BundleMetadata) -> float:
    """The largest top-1 disagreement rate with fp32 the parity record vouches for: the one-sided 95 % Wilson
    upper bound of the measured rate when the record has one, else 1 - the required agreement."""
    parity, row = parity_row(name, metadata)
    agreement, n = row.get("agreement"), parity.get("n_images")
    if isinstance(agreement, (int, float)) and isinstance(n, int) and n > 0 and 0 <= agreement <= 1:
        p, z = 1.0 - float(agreement), CONFIDENCE_Z
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return min(1.0, centre + half)
    minimum = (parity.get("thresholds") or {}).get("min_agreement")
    return 1.0 - (float(minimum) if isinstance(minimum, (int, float)) else DEFAULT_MIN_AGREEMENT)


def binomial_tail(k: int, n: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(n, q)."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(n, i) * q ** i * (1 - q) ** (n - i) for i in range(k, n + 1)))


def soundness(name: str, metadata: BundleMetadata) -> Check:
    """Is the file itself sound, judged from the bundle's record alone? A file parity ruled out never is. A
    reduced-precision file's recorded labels must agree with the fp32 file's on the reference images where the
    fp32 file is decisive (its top-1 leads by more than twice the precision's floor, so rounding of that size
    cannot flip it) as often as its parity record promises: more disagreements than that rate explains (binomial
    tail under SOUNDNESS_ALPHA) fail."""
    refusal = parity_refusal(name, metadata)
    if refusal:
        return Check(False, f"{name}: {refusal}", {})
    entry = metadata.models[name]
    if entry.precision == "fp32":
        return Check(True, f"{name}: the fp32 file is the reference", {})
    reference = metadata.reference
    if reference is None:
        return Check(True, f"{name}: no reference outputs recorded: parity's verdict only", {})
    own, fp32 = reference.outputs.get(name), _fp32_outputs(name, metadata)
    if own is None or fp32 is None or np.shape(own) != fp32.shape:
        return Check(False, f"{name}: no fp32 outputs recorded beside this {entry.precision} file's to prove it "
                            "sound", {})
    top2 = np.sort(fp32, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * floor_for(entry.precision)
    m = int(decisive.sum())
    if not m:
        return Check(False, f"{name}: the fp32 file is decisive on none of the {reference.count} reference images: "
                            "this file's labels cannot be proven sound", {})
    labels = np.asarray(own, np.float64).argmax(axis=1)
    d = int(np.sum(labels[decisive] != fp32.argmax(axis=1)[decisive]))
    q = promised_disagreement(name, metadata)
    tail = binomial_tail(d, m, q)
    line = (f"{name}: recorded labels disagree with fp32's on {d}/{m} reference images where fp32 is decisive "
            f"(parity promises at most {q:.2%}: chance {tail:.2g})")
    return Check(tail >= SOUNDNESS_ALPHA, line, {"disagreements": d, "decisive": m, "promised": q, "chance": tail})


# ---------------------------------------------------------------------------------------------- reference inputs

def _bump(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """A smooth blob: (1 - r^2)^2 inside the ellipse, 0 outside (polynomial: exact on every machine)."""
    d = ((yy - cy) / ry) * ((yy - cy) / ry) + ((xx - cx) / rx) * ((xx - cx) / rx)
    inside = np.maximum(1.0 - d, 0.0)
    return inside * inside


def brain_blobs(seed: int, count: int, height: int, width: int) -> np.ndarray:
    """uint8 (count, height, width, 3): grey 'brain-like' slices (a bright elliptic head, darker ventricles,
    a few tissue blobs, one lesion-like bright spot, faint noise). Synthetic; not a scan of anyone."""
    if not (1 <= count <= 256 and 8 <= height <= 4096 and 8 <= width <= 4096):
        raise ConfigError(f"reference images: count 1..256 and sizes 8..4096, not {count}, {height}x{width}")
    bits = np.random.PCG64(seed)

    def uniform(n: int) -> np.ndarray:  # floats in [0, 1) from PCG64's raw stream: 53 random bits each
        raw = bits.random_raw(n).astype(np.uint64)
        return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)

    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64) / height, np.arange(width, dtype=np.float64) / width,
                         indexing="ij")
    images = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        u = uniform(32)
        head = _bump(yy, xx, 0.5 + 0.08 * (u[0] - 0.5), 0.5 + 0.08 * (u[1] - 0.5), 0.36 + 0.08 * u[2],
                     0.30 + 0.08 * u[3])
        value = 150.0 * np.minimum(head * 4.0, 1.0) + 40.0 * head
        value = value - 70.0 * _bump(yy, xx, 0.5, 0.5 + 0.04 * (u[4] - 0.5), 0.10 + 0.05 * u[5], 0.05 + 0.03 * u[6])
        for k in range(4):  # tissue texture
            a = 7 + 4 * k
            value = value + (30.0 * u[a] - 15.0) * _bump(yy, xx, 0.25 + 0.5 * u[a + 1], 0.25 + 0.5 * u[a + 2],
                                                         0.05 + 0.1 * u[a + 3], 0.05 + 0.1 * u[a + 3])
        value = value + 90.0 * _bump(yy, xx, 0.3 + 0.4 * u[23], 0.3 + 0.4 * u[24], 0.04 + 0.08 * u[25],
                                     0.04 + 0.08 * u[26])  # a lesion
        noise = uniform(height * width).reshape(height, width)
        value = np.clip(value * (0.9 + 0.2 * u[27]) + 12.0 * noise, 0.0, 255.0)
        images[i] = np.rint(value).astype(np.uint8)[..., None]
    return images


# Generator name -> function(seed, count, height, width). Names are stored in bundles: never change what a
# name produces; add a new name instead.
GENERATORS: dict[str, Callable[[int, int, int, int], np.ndarray]] = {"tumor-edge-brain-blobs-v1": brain_blobs}


def reference_images(reference: ReferenceSet, metadata: BundleMetadata) -> np.ndarray:
    generator = GENERATORS.get(reference.generator)
    if generator is None:
        raise ConfigError(f"reference generator {reference.generator!r} is unknown to this tumor-edge "
                          f"(knows {', '.join(GENERATORS)}); upgrade tumor-edge")
    spec = metadata.preprocessing
    return generator(reference.seed, reference.count, spec.height, spec.width)


def reference_role_outputs(classifier, images: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
    """Every output by role ("scores": probabilities, as the runtime returns them) for the reference images."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch_size):
        for role, value in classifier.infer_outputs(images[i:i + batch_size]).items():
            parts.setdefault(role, []).append(np.asarray(value))
    return {role: np.concatenate(values) for role, values in parts.items()}


@dataclass(frozen=True)
class EngineChoice:
    """The file this device runs for a bundle, and the measurements and checks that chose it."""

    file: str
    engine: str
    threads: int | None  # None: the engine's default
    p50_ms: dict[str, float]  # every timed candidate's median latency, batch 1
    measured_at: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # listed files not timed, and why
    checks: dict[str, str] = field(default_factory=dict)  # timed file -> its reproduce result on this device

    def describe(self) -> str:
        others = ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(self.p50_ms.items(), key=lambda kv: kv[1]))
        threads = self.threads if self.threads is not None else "default"
        return f"{self.file} ({self.engine}, {threads} threads; p50 batch 1: {others})"


def bundle_key(metadata: BundleMetadata) -> str:
    """The bundle's identity for a choice: the names and sha256s of its model files."""
    text = "\n".join(f"{name} {entry.sha256}" for name, entry in sorted(metadata.models.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def reference_key(name: str, metadata: BundleMetadata) -> str:
    """What a reproduce result depends on besides the file: the outputs recorded for it."""
    outputs = metadata.reference.outputs.get(name) if metadata.reference else None
    return hashlib.sha256(json.dumps(outputs).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def machine_key() -> dict[str, str]:
    """What the fastest file depends on besides the bundle: the CPU model and ISA, and the installed version of
    every engine in the engine table (`engine_versions`), once a process."""
    from tumor_edge.machine import _cpuinfo, cpu_isa, cpu_model

    return {"machine": platform.machine().lower(), "cpu": cpu_model(_cpuinfo()), "isa": cpu_isa(),
            **engine_versions()}


def machine_folder(options: BackendOptions | None = None) -> Path:
    machine = machine_key()
    digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(options) / CHOICES_DIR / f"{machine['machine']}-{machine['isa']}-{digest}"


def record_path(metadata: BundleMetadata, options: BackendOptions | None = None) -> Path:
    threads = (options.threads if options else None) or "default"
    return machine_folder(options) / f"{bundle_key(metadata)}-t{threads}.json"


def checks_path(metadata: BundleMetadata, options: BackendOptions | None = None) -> Path:
    return machine_folder(options) / f"{bundle_key(metadata)}-checks.json"


def _read_body(path: Path, metadata: BundleMetadata, key: str, options: BackendOptions | None = None) -> Any:
    """The `key` part of a record, or None when it is absent, damaged, edited, planted (its keyed MAC does not
    verify with this user's secret) or another bundle's."""
    data = read_record(path, options)
    if data is None or data.get("version") != RECORD_VERSION or data.get("bundle") != bundle_key(metadata):
        log.info("ignoring a missing, damaged, edited or foreign record %s", path)
        return None
    return data.get(key)


def _write_body(path: Path, metadata: BundleMetadata, key: str, body: Any, options: BackendOptions | None) -> None:
    try:
        folder_for(options, CHOICES_DIR, path.parent.name)  # private to this user, else CacheRefused (an OSError)
        write_record(path, {"version": RECORD_VERSION, "bundle": bundle_key(metadata), key: body}, options)
    except OSError as err:  # a read-only home only costs checking and measuring again next time
        log.info("could not record in %s: %s", path, err)


def recorded_checks(metadata: BundleMetadata, options: BackendOptions | None = None) -> dict[str, dict]:
    """This device's reproduce results for the bundle's files: {file: {"ok", "line", "reference"}}, only those
    made against the reference outputs the bundle records now."""
    body = _read_body(checks_path(metadata, options), metadata, "checks", options) if cache_enabled(options) else None
    if not isinstance(body, dict):
        return {}
    return {name: entry for name, entry in body.items() if name in metadata.models and isinstance(entry, dict)
            and entry.get("reference") == reference_key(name, metadata) and isinstance(entry.get("ok"), bool)}


def record_checks(metadata: BundleMetadata, results: Mapping[str, Check],
                  options: BackendOptions | None = None) -> None:
    """Add reproduce results to this device's record for the bundle (verify and the first use both call it)."""
    if not cache_enabled(options) or not results:
        return
    body = recorded_checks(metadata, options)
    body.update({name: {"ok": check.ok, "line": check.line, "reference": reference_key(name, metadata)}
                 for name, check in results.items()})
    _write_body(checks_path(metadata, options), metadata, "checks", body, options)


def not_here(bundle_dir: Path, name: str) -> str | None:
    """Why this device cannot open a listed file at all (absent, outside the folder, engine not installed)."""
    try:
        if not member_path(bundle_dir, name).is_file():
            return "not in this copy of the bundle"
        engine_row(member_path(bundle_dir, name))
    except TumorEdgeError as err:
        return err.reason
    return None


def candidates(bundle_dir: Path, metadata: BundleMetadata, options: BackendOptions | None = None
               ) -> tuple[list[str], dict[str, str]]:
    """(files this device may run, in the format table's order; {file: why not} for the rest). A file that
    failed its reproduce check on this device is out; one not yet checked is in (`checked_candidates` checks)."""
    order = {name: i for i, name in enumerate(DEFAULT_MODEL_PREFERENCE)}
    failed = {name: entry["line"] for name, entry in recorded_checks(metadata, options).items() if not entry["ok"]}
    ok, skipped = [], {}
    for name in sorted(metadata.models, key=lambda n: order.get(n, len(order))):
        if why := not_here(bundle_dir, name):
            skipped[name] = why
        elif name in failed:
            skipped[name] = f"this device does not reproduce it: {failed[name]}"
        elif metadata.reference is not None and name not in metadata.reference.outputs:
            skipped[name] = "no reference outputs recorded for it: this device cannot check it"
        elif not (sound := soundness(name, metadata)).ok:
            skipped[name] = f"not sound: {sound.line}"
        else:
            ok.append(name)
    return ok, skipped


def checked_candidates(bundle_dir: Path, metadata: BundleMetadata, opener: Opener,
                       options: BackendOptions | None = None, first_only: bool = False
                       ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(candidates this device has reproduced, {file: why not}, {file: its check's line}): each candidate not yet
    checked here is run on the reference images once, and the result recorded. `first_only`: stop at the first
    candidate (in the format table's order) that reproduces, the one a caller without timing runs."""
    allowed, skipped = candidates(bundle_dir, metadata, options)
    if metadata.reference is None:
        return allowed, skipped, dict.fromkeys(allowed, UNCHECKED)
    done = recorded_checks(metadata, options)
    fresh: dict[str, Check] = {}
    for name in allowed:
        if name not in done:  # run on the bundle's reference images here, compared with the recorded outputs
            try:
                outputs = reference_role_outputs(opener(name), reference_images(metadata.reference, metadata))
                fresh[name] = reproduce(name, outputs[SCORES], metadata)
            except BundleIntegrityError:
                raise  # a changed or unsigned file is the bundle's fault, said as such, never recorded against it
            except TumorEdgeError as err:
                fresh[name] = Check(False, f"{name}: {err.reason}", {})
        if first_only and (fresh[name].ok if name in fresh else done[name]["ok"]):
            allowed = allowed[:allowed.index(name) + 1]
            break
    record_checks(metadata, fresh, options)
    lines = {name: entry["line"] for name, entry in done.items()} | {n: c.line for n, c in fresh.items()}
    skipped.update({name: f"this device does not reproduce it: {c.line}" for name, c in fresh.items() if not c.ok})
    kept = [name for name in allowed if name not in skipped]
    return kept, skipped, {name: lines[name] for name in kept}


def recorded_choices(bundle_dir: Path, metadata: BundleMetadata) -> list[EngineChoice]:
    """Every intact choice recorded on this machine for this bundle, one per thread count (for `env`)."""
    allowed, _ = candidates(Path(bundle_dir), metadata)
    paths = sorted(machine_folder().glob(f"{bundle_key(metadata)}-t*.json"))  # none where the folder is missing
    return [choice for path in paths if (choice := recorded_choice(bundle_dir, metadata, None, allowed, path))]


def recorded_choice(bundle_dir: Path, metadata: BundleMetadata, options: BackendOptions | None = None,
                    allowed: list[str] | None = None, path: Path | None = None) -> EngineChoice | None:
    """The choice recorded on this device for this bundle, machine and thread count (or in the record at `path`),
    if it is intact and its file may still run; None otherwise (then measure again)."""
    if allowed is None:
        allowed, _ = candidates(Path(bundle_dir), metadata, options)
    body = _read_body(path or record_path(metadata, options), metadata, "choice", options)
    try:
        choice = EngineChoice(**body) if isinstance(body, dict) else None
    except TypeError:
        return None
    return choice if choice is not None and choice.file in allowed else None


def time_candidates(runners: Mapping[str, Callable[[], object]], budget_s: float,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """p50 seconds of each runner, timed in interleaved rounds (each round runs every runner once, the order
    reversed every other round: A B, B A, A B, ...), so a change of load during the budget falls on all alike.
    At least MIN_ROUNDS rounds, then rounds while the budget lasts (at most MAX_ROUNDS)."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = clock() + budget_s
    rounds = 0
    while rounds < MIN_ROUNDS or (clock() < deadline and rounds < MAX_ROUNDS):
        for name in names if rounds % 2 == 0 else names[::-1]:
            t0 = clock()
            runners[name]()
            times[name].append(clock() - t0)
        rounds += 1
    return {name: float(np.median(values)) for name, values in times.items()}


def preferred(p50: Mapping[str, float], order: list[str], margin: float = NOISE_MARGIN) -> str:
    """The first file in `order` whose p50 is within `margin` of the fastest: a faster file displaces a preferred
    one only by more than the timing noise."""
    fastest = min(p50.values())
    return next(name for name in order if name in p50 and p50[name] <= fastest * (1.0 + margin))


def measure_choice(bundle_dir: str | Path, opener: Opener, metadata: BundleMetadata | None = None,
                   options: BackendOptions | None = None, budget_s: float = BUDGET_S) -> EngineChoice:
    """Check, time and record: the choice among the candidates this device reproduced. A file that fails to
    load or run is skipped with its reason. Raises TumorEdgeError when no file can run here."""
    bundle_dir = Path(bundle_dir)
    metadata = metadata or BundleMetadata.read(bundle_dir)
    options = options or BackendOptions()
    allowed, skipped, checks = checked_candidates(bundle_dir, metadata, opener, options)
    spec = metadata.preprocessing
    image = brain_blobs(1, 1, spec.height, spec.width)
    runners: dict[str, Callable[[], object]] = {}
    engines: dict[str, str] = {}
    for name in allowed:
        try:
            clf = opener(name)
            for _ in range(WARMUP_RUNS):
                clf.infer_outputs(image)
        except TumorEdgeError as err:
            skipped[name] = err.reason
            continue
        runners[name] = functools.partial(clf.infer_outputs, image)
        engines[name] = clf.backend.name
    if not runners:
        raise _none_runs(bundle_dir, skipped)
    p50 = time_candidates(runners, budget_s)
    best = preferred(p50, list(runners))
    choice = EngineChoice(best, engines[best], options.threads, {k: round(1000 * v, 4) for k, v in p50.items()},
                          time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine_key(), skipped,
                          {name: checks[name] for name in runners})
    if cache_enabled(options):
        _write_body(record_path(metadata, options), metadata, "choice", asdict(choice), options)
    return choice


def pick_model(bundle_dir: str | Path, metadata: BundleMetadata, opener: Opener,
               options: BackendOptions | None = None) -> str:
    """The file `classify`/`serve`/`bench` run when told only the bundle: the recorded choice; else a check of
    the candidates on the reference images and, with more than one left, a measurement (both recorded).
    Raises TumorEdgeError when every file this device could open was refused (unsound, or not reproduced)."""
    bundle_dir = Path(bundle_dir)
    allowed, _ = candidates(bundle_dir, metadata, options)
    measure = len(allowed) > 1 and os.environ.get(NO_MEASURE_ENV, "") in ("", "0") and cache_enabled(options)
    choice = recorded_choice(bundle_dir, metadata, options, allowed) if measure else None
    if choice is not None and (metadata.reference is None
                               or recorded_checks(metadata, options).get(choice.file, {}).get("ok")):
        return choice.file
    if measure:
        return measure_choice(bundle_dir, opener, metadata, options).file
    allowed, skipped, _ = checked_candidates(bundle_dir, metadata, opener, options, first_only=True)
    if not allowed and all(not_here(bundle_dir, name) for name in metadata.models):
        return metadata.default_model()  # opening it says why it cannot run here
    if not allowed:
        raise _none_runs(bundle_dir, skipped)
    return allowed[0]


def _none_runs(bundle_dir: Path, skipped: Mapping[str, str]) -> TumorEdgeError:
    reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "it lists no models"
    return TumorEdgeError(f"no model file of this bundle can run on this device ({reasons})", bundle_dir)


# This device's private folder of records. A folder others can write is one where they could plant a record, so
# it is refused; each record carries an HMAC-SHA256 keyed by a per-user secret in it, so a record copied from
# elsewhere, edited, or planted with a recomputed plain hash fails its check and is ignored.

CACHE_DIR_ENV = "TUMOR_EDGE_CACHE_DIR"
NO_CACHE_ENV = "TUMOR_EDGE_NO_CACHE"
APP_DIR = "tumor-edge"
SECRET_FILE = "secret.key"
SECRET_BYTES = 32
MAX_RECORD_BYTES = 1 << 20
MAC_FIELD = "hmac_sha256"


class CacheRefused(PermissionError):
    """The cache folder or its secret cannot be trusted (another owner, writable by others, a link)."""


def cache_enabled(options: BackendOptions | None) -> bool:
    return (options is None or options.cache) and os.environ.get(NO_CACHE_ENV, "") in ("", "0")


def cache_root(options: BackendOptions | None = None) -> Path:
    """The folder holding this user's records."""
    if options is not None and options.cache_dir:
        return Path(options.cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / APP_DIR


def private_folder(path: Path) -> Path:
    """`path`, created 0700 when missing, after checking it is a folder (not a link) this user owns and no one
    else can write; CacheRefused otherwise."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise CacheRefused(f"cache folder {path} is not a folder (a link?)")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheRefused(f"cache folder {path} belongs to another user")
    if info.st_mode & 0o022:
        raise CacheRefused(f"cache folder {path} is writable by others")
    return path


def folder_for(options: BackendOptions | None, *parts: str) -> Path:
    """A private subfolder of the cache root (each level checked by `private_folder`)."""
    folder = private_folder(cache_root(options))
    for part in parts:
        folder = private_folder(folder / part)
    return folder


def secret(options: BackendOptions | None = None) -> bytes:
    """This user's MAC key, created on first use (0600, O_EXCL: of two first runs, one writes it, both read it)."""
    path = private_folder(cache_root(options)) / SECRET_FILE
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(SECRET_BYTES))
    fd = os.open(path, os.O_RDONLY | nofollow)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if (hasattr(os, "getuid") and info.st_uid != os.getuid()) or info.st_mode & 0o077:
            raise CacheRefused(f"cache secret {path} is not private to this user")
        key = fh.read(SECRET_BYTES + 1)
    if len(key) != SECRET_BYTES:
        raise CacheRefused(f"cache secret {path} is damaged")
    return key


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def write_record(path: Path, body: dict[str, Any], options: BackendOptions | None = None) -> None:
    """Write `body` (JSON) with its MAC to `path`, a file in a folder from `folder_for`, atomically (a temporary
    file created O_EXCL in the same folder, then renamed). OSError (CacheRefused included) when it cannot."""
    import tempfile

    data = {**body, MAC_FIELD: _mac(secret(options), body)}
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path, options: BackendOptions | None = None) -> dict[str, Any] | None:
    """The body `write_record` wrote at `path`, or None when it is missing, unreadable, a link, or its MAC does not
    verify with this user's secret (edited, copied from another user, planted)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = json.loads(fh.read(MAX_RECORD_BYTES).decode("utf-8"))
        body = {k: v for k, v in data.items() if k != MAC_FIELD}
        if hmac.compare_digest(str(data.get(MAC_FIELD, "")), _mac(secret(options), body)):
            return body
    except (OSError, ValueError, AttributeError):
        pass
    return None
