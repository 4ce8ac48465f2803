"""Derived figures over recorded results: ratios to the Keras reference and to ONNX fp32, achieved GMAC/s as a
fraction of the matmul ceiling, and the performance targets. Pure functions over the result rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

Row = dict[str, Any]

REFERENCE_COLUMNS: dict[str, str] = {"vs_keras": "keras", "vs_onnx_fp32": "onnx-fp32"}


def _index(rows: list[Row]) -> dict[tuple[str, int, int], Row]:
    return {(r["format"], r["threads"], r["batch"]): r for r in rows}


def add_ratios(rows: list[Row]) -> None:
    """p50 of each row over the reference format's p50 at the same threads and batch (None where absent)."""
    index = _index(rows)
    for row in rows:
        for column, ref_key in REFERENCE_COLUMNS.items():
            ref = index.get((ref_key, row["threads"], row["batch"]))
            row[column] = row["p50_ms"] / ref["p50_ms"] if ref and ref["p50_ms"] > 0 else None


def add_rates(rows: list[Row], macs_per_image: int | None, ceilings: dict[int, float]) -> None:
    """Achieved GMAC/s at the p50 and its fraction of the float32 matmul ceiling at the same thread count.

    int8 formats can exceed 1.0: the ceiling is the float32 rate, the one every format is compared with.
    """
    for row in rows:
        if not macs_per_image:
            row["gmacs"] = row["ceiling_fraction"] = None
            continue
        gmacs = macs_per_image * row["batch"] / (row["p50_ms"] / 1000.0) / 1e9
        ceiling = ceilings.get(row["threads"])
        row["gmacs"] = gmacs
        row["ceiling_fraction"] = gmacs / ceiling if ceiling else None


@dataclass(frozen=True)
class Goal:
    """A performance goal: p50 of `numerator` over p50 of `denominator` at most `limit`."""

    name: str
    numerator: str
    denominator: str
    limit: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GOALS: tuple[Goal, ...] = (
    Goal("ONNX fp32 vs Keras (tf.function)", "onnx-fp32", "keras", 0.45),
    Goal("ONNX fp32 vs LiteRT fp32", "onnx-fp32", "tflite-fp32", 0.80),
    Goal("ONNX int8 vs ONNX fp32", "onnx-int8", "onnx-fp32", 1.00),
)


def check_goals(rows: list[Row], threads: int, batch: int = 1, macs_per_image: int | None = None,
                ceiling_gmacs: float | None = None) -> list[Row]:
    """Each goal evaluated at (threads, batch) where both formats were measured.

    With the MAC count and the float32 ceiling, a goal also says what fraction of the ceiling its numerator
    would have to reach (`required_ceiling_fraction`): above 1 for a float32 numerator, the goal is beyond this
    machine's float32 arithmetic, whatever the engine does (the reference is already that close to the limit).
    """
    index = _index(rows)
    out = []
    for goal in GOALS:
        num = index.get((goal.numerator, threads, batch))
        den = index.get((goal.denominator, threads, batch))
        if not num or not den:
            continue
        ratio = num["p50_ms"] / den["p50_ms"]
        entry = {**goal.to_dict(), "threads": threads, "batch": batch, "numerator_p50_ms": num["p50_ms"],
                 "denominator_p50_ms": den["p50_ms"], "ratio": ratio, "passed": ratio <= goal.limit,
                 "required_ceiling_fraction": None, "reachable_in_fp32": None}
        if macs_per_image and ceiling_gmacs:
            needed_gmacs = macs_per_image * batch / (goal.limit * den["p50_ms"] / 1000.0) / 1e9
            entry["required_ceiling_fraction"] = needed_gmacs / ceiling_gmacs
            if num.get("precision") == "fp32":
                entry["reachable_in_fp32"] = needed_gmacs <= ceiling_gmacs
        out.append(entry)
    return out
