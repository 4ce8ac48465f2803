"""`quantize_onnx_int8`: ONNX static int8 (QDQ) whose calibration method is chosen on the validation split and
whose most sensitive nodes fall back to float until it meets the parity goal against fp32.

Steps: `quant_pre_process` and the float-by-construction rewrites (graph.py); one calibration pass for every
method (calibration.py); one QDQ model per method (`quantize_static` fed the precomputed ranges) in the first
weight range; each scored against the fp32 ONNX model on the validation images, the least lossy kept
(scoring.py); the chosen method in every other weight range (config.WEIGHT_RANGES), scored the same way, the
least lossy kept; if it misses the goal, the accuracy-aware fallback (sensitivity.py); last, the reference seed
whose images drive the shipped file's activations highest (scoring.py). The report says what was tried, what
stayed float and why.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.errors import first_line
from tumor_edge.export.quantize.calibration import collect_ranges, quiet_stdout
from tumor_edge.export.quantize.config import NO_VALIDATION_RANGE, WEIGHT_RANGES, QuantizationConfig
from tumor_edge.export.quantize.graph import (
    crop_padding_taps,
    depthwise_average_pools,
    drop_identity_reshapes,
    float_average_pools,
    head_nodes,
    preprocess_for_quantization,
)
from tumor_edge.export.quantize.scoring import CandidateScore, choose_reference_seed, probabilities, score
from tumor_edge.export.quantize.sensitivity import accuracy_aware_fallback
from tumor_edge.export.reference import DEFAULT_COUNT, DEFAULT_SEED
from tumor_edge.runtime import Preprocessing


@dataclass
class QuantizationReport:
    chosen: str
    why: str
    config: dict[str, Any]
    calibration_images: int
    validation_images: int
    reference: dict[str, Any] = field(default_factory=dict)  # fp32 ONNX on the validation images
    candidates: list[CandidateScore] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)  # every node left in float, whatever the reason
    float_reasons: dict[str, str] = field(default_factory=dict)  # reason -> which float_nodes it covers
    accuracy_aware: dict[str, Any] | None = None  # sensitivity.FallbackResult.to_dict(), when it ran
    rewrites: dict[str, int] = field(default_factory=dict)  # exact graph rewrites before quantization: how many
    weight_range: dict[str, Any] = field(default_factory=dict)  # {"chosen", "why", "candidates": [scores]}
    reference_images: dict[str, Any] = field(default_factory=dict)  # scoring.ReferenceChoice.to_dict()
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the candidates too: asdict recurses


def quantize_with_ranges(src: Path, dst: Path, method: str, tensors_range, config: QuantizationConfig,
                         exclude: Sequence[str], work_dir: Path, weights: str = "s8") -> Path:
    """QDQ int8 with precomputed ranges, via `quantize_static`'s calibration cache; `weights` names a WEIGHT_RANGES
    row."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = work_dir / f"calibration_{method}.json"
    save_tensors_data(tensors_range, cache)
    method_enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}[method]
    with quiet_stdout():
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                        reduce_range=WEIGHT_RANGES[weights].reduce_range,
                        activation_type=QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QUInt8 if WEIGHT_RANGES[weights].weight_type == "uint8"
                        else QuantType.QInt8, calibrate_method=method_enum,
                        nodes_to_exclude=list(exclude), calibration_cache_path=str(cache))
    cache.unlink(missing_ok=True)
    return dst


def quantize_onnx_int8(fp32_path: Path, dst: Path, calib_pixels: np.ndarray, val_pixels: np.ndarray | None,
                       val_labels: np.ndarray | None, n_classes: int, spec: Preprocessing,
                       config: QuantizationConfig, work_dir: Path, show_progress: bool = True
                       ) -> QuantizationReport:
    """Write the int8 ONNX file at `dst` and say how it was made, why that calibration method won and which
    nodes stayed float (and why)."""
    import onnx

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = preprocess_for_quantization(fp32_path, work_dir / "model_fp32.pre.onnx")
    model = onnx.load(str(prepared))
    head = head_nodes(model) if config.keep_head_float else []
    pools = float_average_pools(model) if config.average_pools == "float" else []
    depthwise = depthwise_average_pools(model) if config.average_pools == "depthwise" else 0
    # Exact rewrites that only shorten the int8 graph (small inputs: 1x1 feature maps), see graph.py.
    reshapes = drop_identity_reshapes(model)
    cropped = crop_padding_taps(model)
    if pools or depthwise or reshapes or cropped:
        onnx.save(model, str(prepared))
    exclude = head + pools
    timings["pre_process"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranges = collect_ranges(prepared, calib_pixels, spec, config, work_dir, show_progress)
    timings["calibration"] = time.perf_counter() - t0
    report = QuantizationReport(chosen="", why="", config=asdict(config), calibration_images=len(calib_pixels),
                                validation_images=0 if val_pixels is None else len(val_pixels),
                                float_nodes=list(exclude), seconds=timings,
                                rewrites={"identity_reshapes_dropped": len(reshapes),
                                          "convolutions_cropped_to_used_taps": len(cropped)})
    report.float_reasons |= {why: ", ".join(names) for why, names in (
        ("classifier head (a few thousand MACs; int8 would round probabilities)", head),
        ("padded average pools (onnxruntime's QLinearAveragePool is slower than a float pool)", pools)) if names}
    weight_ranges = config.range_candidates()
    has_validation = val_pixels is not None and len(val_pixels) > 0
    first = weight_ranges[0] if has_validation or len(weight_ranges) == 1 else NO_VALIDATION_RANGE
    candidates: dict[str, Path] = {}
    for method in config.methods:
        t0 = time.perf_counter()
        candidates[method] = quantize_with_ranges(prepared, work_dir / f"model_int8_{method}.onnx", method,
                                                  ranges[method], config, exclude, work_dir, first)
        timings[f"quantize_{method}"] = time.perf_counter() - t0
    if not has_validation:
        del ranges
        report.chosen = config.methods[0] if len(candidates) == 1 or "minmax" not in candidates else "minmax"
        report.why = ("only method asked for" if len(candidates) == 1
                      else "no validation images to compare methods on; MinMax is onnxruntime's default")
        _record_range(report, first, "only range asked for" if len(weight_ranges) == 1 else
                      "no validation images to measure the ranges on: the range that saturates on no CPU", [])
        shipped: Any = candidates[report.chosen]
    else:
        t0 = time.perf_counter()
        batch = max(config.batch_size, 16)
        reference = probabilities(fp32_path, val_pixels, spec, batch)
        ref = score("fp32", reference, reference, val_labels, n_classes)
        report.reference = asdict(ref)
        method_probs: dict[str, np.ndarray] = {}
        for method, path in candidates.items():
            t1 = time.perf_counter()
            method_probs[method] = probabilities(path, val_pixels, spec, batch)
            candidate = score(method, method_probs[method], reference, val_labels, n_classes)
            candidate.seconds = round(time.perf_counter() - t1, 2)
            report.candidates.append(candidate)
        best = min(report.candidates, key=lambda c: c.loss_key(ref))
        report.chosen = best.method
        report.why = ("least loss against fp32 ONNX on the validation images (top-1 agreement, then accuracy, "
                      "then macro AUC, then mean probability shift)"
                      if len(candidates) > 1 else "only method asked for")
        timings["selection"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        shipped, probs = _choose_range(report, best, candidates[report.chosen], prepared, ranges[report.chosen],
                                       weight_ranges, exclude, config, work_dir, val_pixels, val_labels, reference,
                                       method_probs[report.chosen], spec, n_classes, batch, ref)
        del ranges
        timings["weight_range"] = time.perf_counter() - t0
        candidates[f"{report.chosen}/{report.weight_range['chosen']}"] = shipped
        if config.accuracy_aware:
            shipped = _fallback(report, shipped, prepared, val_pixels, val_labels, reference, probs, spec,
                                n_classes, config, timings)
    if isinstance(shipped, Path):
        shipped.replace(dst)
        candidates = {k: v for k, v in candidates.items() if v != shipped}
    else:
        onnx.save(shipped, str(dst))
    for path in candidates.values():
        path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    report.reference_images = choose_reference_seed(dst, spec, DEFAULT_SEED, DEFAULT_COUNT).to_dict()
    timings["reference_images"] = time.perf_counter() - t0
    report.seconds = {k: round(v, 2) for k, v in timings.items()}
    return report


def _record_range(report: QuantizationReport, name: str, why: str, scores: list[CandidateScore]) -> None:
    row = WEIGHT_RANGES[name]
    report.weight_range = {"chosen": name, "why": why, "candidates": [asdict(c) for c in scores]}
    report.config |= {"reduce_range": row.reduce_range, "weight_type": row.weight_type, "weight_range": name}


def _choose_range(report: QuantizationReport, best: CandidateScore, chosen: Path, prepared: Path, tensors_range,
                  weight_ranges: Sequence[str], exclude: Sequence[str], config: QuantizationConfig, work_dir: Path,
                  val_pixels: np.ndarray, val_labels: np.ndarray | None, reference: np.ndarray,
                  chosen_probs: np.ndarray, spec: Preprocessing, n_classes: int, batch: int,
                  ref: CandidateScore) -> tuple[Path, np.ndarray]:
    """The chosen method in every weight range, scored on the validation images; the least lossy is kept (ties:
    the table's order). A range onnxruntime cannot make for this graph is skipped with its reason."""
    first = weight_ranges[0]
    scores = [replace(best, method=f"{best.method}/{first}")]
    paths, probs = {first: chosen}, {first: chosen_probs}
    skipped = {}
    for name in weight_ranges[1:]:
        t0 = time.perf_counter()
        try:
            paths[name] = quantize_with_ranges(prepared, work_dir / f"model_int8_{best.method}_{name}.onnx",
                                               best.method, tensors_range, config, exclude, work_dir, name)
            probs[name] = probabilities(paths[name], val_pixels, spec, batch)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; the range is only skipped
            skipped[name] = first_line(err)
            continue
        scores.append(score(f"{best.method}/{name}", probs[name], reference, val_labels, n_classes))
        scores[-1].seconds = round(time.perf_counter() - t0, 2)
    winner = min(scores, key=lambda c: c.loss_key(ref))
    name = winner.method.split("/", 1)[1]
    why = (f"least loss against fp32 ONNX on {len(val_pixels)} validation images among "
           f"{', '.join(c.method.split('/', 1)[1] for c in scores)}: {WEIGHT_RANGES[name].why}"
           if len(scores) > 1 else "only range asked for")
    _record_range(report, name, why, scores)
    if skipped:
        report.weight_range["skipped"] = skipped
    for other, path in paths.items():
        if other != name:
            path.unlink(missing_ok=True)
    return paths[name], probs[name]


def _fallback(report: QuantizationReport, chosen: Path, prepared: Path, val_pixels: np.ndarray,
              val_labels: np.ndarray | None, reference: np.ndarray, naive_probs: np.ndarray, spec: Preprocessing,
              n_classes: int, config: QuantizationConfig, timings: dict[str, float]) -> Any:
    """Run the accuracy-aware search on the chosen method's model; returns what to ship (path or ModelProto)."""
    import onnx

    t0 = time.perf_counter()
    result = accuracy_aware_fallback(onnx.load(str(chosen)), onnx.load(str(prepared)), val_pixels, val_labels,
                                     reference, naive_probs, spec, n_classes, config)
    timings["accuracy_aware"] = time.perf_counter() - t0
    report.accuracy_aware = result.to_dict()
    if result.model is None:
        report.accuracy_aware["outcome"] = ("naive int8 met the goal: no node needed float" if result.holds else
                                            f"goal NOT met: {result.stopped}")
        return chosen
    names = [f["node"] for f in result.float_nodes]
    report.float_nodes += names
    report.float_reasons["accuracy-aware fallback (most sensitive on validation, see accuracy_aware)"] = \
        ", ".join(names)
    report.accuracy_aware["outcome"] = (
        f"{len(names)} node(s) kept float ({result.float_mac_fraction:.1%} of the int8 MACs); "
        f"goal {'met' if result.holds else 'NOT met'} on {report.validation_images} validation images"
        + (f" ({result.stopped})" if result.stopped else ""))
    return result.model
