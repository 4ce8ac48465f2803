"""The two checks of one bundle file that every caller shares (verify, the device's choice of the file it runs).

A file is runnable on a device when:
- it is sound (`soundness`): export's parity did not rule it out, and its recorded outputs on the reference
  images agree with the fp32 file's recorded labels at the rate its parity record promises. This reads only the
  bundle's record, so a collapsed, permuted or constant-output file fails wherever it is checked, whatever its
  recorded error says;
- this device reproduces it (`reproduce`): its outputs here on the reference images (tumor_edge.runtime.reference)
  lie within `tolerance_for` of its recorded outputs.
Kept apart from the image generators: a device that has checked a bundle's files once reads only these rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tumor_edge.contracts.bundle import BundleMetadata


@dataclass(frozen=True)
class Floor:
    """The smallest tolerance of one precision, and the measurement it comes from (export writes both into the
    bundle's reference record, so a bundle says what its devices were allowed)."""

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


def floors_record() -> dict[str, dict[str, float | str]]:
    """FLOORS as export records them in a bundle."""
    return {precision: {"value": floor.value, "source": floor.source} for precision, floor in FLOORS.items()}


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
    """E: the largest difference between this file's recorded outputs and the fp32 file's (0 for fp32 files)."""
    reference = metadata.reference
    fp32 = _fp32_outputs(name, metadata)
    own = reference.outputs.get(name)
    if metadata.models[name].precision == "fp32" or fp32 is None or own is None or np.shape(own) != fp32.shape:
        return 0.0
    effect = float(np.max(np.abs(np.asarray(own, np.float64) - fp32)))
    return effect if math.isfinite(effect) else CAP


def tolerance_for(name: str, metadata: BundleMetadata) -> float:
    """The largest probability difference accepted between this file's recorded outputs and this device's:
    min(CAP, max(floor, EFFECT_FACTOR * E)). The device's kernels may round as much as the export machine's did
    (E, its recorded difference from fp32), independently; the floor covers kernels of another kind; the cap
    keeps the limit below what a broken device shows, however large E is (soundness judges E)."""
    precision = metadata.models[name].precision
    floor = floor_for(precision)
    if precision == "fp32" or metadata.reference is None:
        return floor
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
