"""TFLite files through the route that works with Keras 3: `model.export()` to a SavedModel (written once per
export), then `tf.lite.TFLiteConverter.from_saved_model` (fp32, fp16 weights, and int8).

Accuracy-aware int8: choose the converter's options on validation agreement, then keep the most sensitive ops in
float (selective quantization) until the int8 model meets the parity goal against the float SavedModel.

The converter allows less than onnxruntime: one calibration (its own min/max), int8 activations, and two knobs
that matter, per-channel weights and op/node denylists, applied by re-quantizing one calibrated model
(`_Quantizer`), so trying options is affordable.

The sensitivity unit is an op together with the op producing its activation input: TFLite quantizes a tensor
where it is produced, so an op denylisted alone still reads an int8 tensor (the outlier-dominated range that
hurt in the first place). Each unit is probed on the focus images (flipped first, then most shifted), ranked,
and added greedily (1, 2, 3, 4, 6, 8, ... units) with a full validation score per step, as for ONNX
(tumor_edge.export.quantize.sensitivity).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.export.quantize.config import ParityGoal
from tumor_edge.export.quantize.scoring import CandidateScore, score
from tumor_edge.export.quantize.sensitivity import NearestStep, Probe, fallback_schedule, focus_indices
from tumor_edge.runtime import BackendOptions, Preprocessing, open_backend, scale

# Op types an int8 file keeps in float: a full-integer softmax rounds probabilities to multiples of 1/256, so
# confident predictions tie and the macro AUC drops.
FLOAT_OPS = ("SOFTMAX",)
# Ops whose weights make them the int8 work of a CNN: the candidates for a float fallback.
WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"})


@dataclass
class TfliteInt8Config:
    per_channel_options: tuple[bool, ...] = (True, False)  # weight scales tried (per-channel, per-tensor)
    accuracy_aware: bool = True
    goal: ParityGoal = ParityGoal()
    max_probes: int = 24
    # Probes in a row that bring the focus images no closer to the float model than the best probe so far (or
    # the naive model) before probing stops: when no single unit moves them, each further probe is a
    # re-quantization that ranks nothing. Units left unprobed keep their order after the probed ones.
    probe_patience: int = 6
    probe_images: int = 48
    batch_size: int = 16
    max_float_fraction: float = 0.3  # of the weighted ops: beyond it int8 loses its speed, the search stops
    # Schedule steps in a row that may leave the goal's shortfall where it was before the search gives up. Each
    # step is a re-quantization and a validation pass; a shortfall of one image, finer than the validation set
    # resolves, can stay put however many units go float, so the search stops rather than spend every step.
    stall_steps: int = 3


@dataclass
class TfliteInt8Report:
    chosen: str
    why: str
    calibration_images: int
    validation_images: int
    reference: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=lambda: list(FLOAT_OPS))
    float_nodes: list[dict[str, Any]] = field(default_factory=list)  # denylisted output tensors, with why
    probes: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    holds: bool | None = None
    stopped: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def export_saved_model(model, dst: Path) -> Path:
    model.export(str(dst), format="tf_saved_model", verbose=False)
    return dst


def _converter(saved_model: Path, representative: Callable[[], Iterator[list[np.ndarray]]] | None = None):
    """The SavedModel's converter; with `representative`, set up to quantize calibrated on it."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
    return converter


def _write(data: bytes, dst: Path) -> Path:
    dst.write_bytes(data)
    return dst


def export_tflite_fp32(saved_model: Path, dst: Path) -> Path:
    return _write(_converter(saved_model).convert(), dst)


def export_tflite_fp16(saved_model: Path, dst: Path) -> Path:
    """float16 weights (half the size); LiteRT's CPU kernels dequantize them to float32 at load."""
    import tensorflow as tf

    converter = _converter(saved_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return _write(converter.convert(), dst)


def export_tflite_int8(saved_model: Path, dst: Path,
                       representative: Callable[[], Iterator[list[np.ndarray]]], full_integer: bool = False) -> Path:
    """int8 TFLite from `representative`, [float32 (1, H, W, 3)] batches of the training split scaled as the
    model expects. Default: per-channel weights, every op int8 but FLOAT_OPS, float32 input and output (no
    fallback search: `tflite_int8_accuracy_aware` adds it). `full_integer=True`: int8 input and output,
    TFLITE_BUILTINS_INT8 only, for accelerators that need every op int8."""
    if not full_integer:
        return _write(_Quantizer(saved_model, representative).quantize(per_channel=True), dst)
    import tensorflow as tf

    converter = _converter(saved_model, representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return _write(converter.convert(), dst)


def representative_dataset(pixels: np.ndarray, spec: Preprocessing) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's representative dataset: each uint8 image scaled as the model expects, batch 1."""
    def generate():
        for i in range(len(pixels)):
            yield [scale(pixels[i:i + 1], spec)]
    return generate


def float_reference(saved_model: Path, pixels: np.ndarray, spec: Preprocessing, batch_size: int = 16) -> np.ndarray:
    """The SavedModel's own float probabilities (its serving signature, i.e. the Keras model)."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    out = []
    for start in range(0, len(pixels), batch_size):
        result = fn(tf.constant(scale(pixels[start:start + batch_size], spec)))
        # A model with a heatmap (and OOD) output has several; Keras names them output_0.. and output_0 is the
        # class scores. The dict's own order is not the model's (output_1 may come first).
        scores = result["output_0"] if "output_0" in result else next(iter(result.values()))
        out.append(np.asarray(scores, dtype=np.float32))
    return np.concatenate(out)


def tflite_probabilities(model: bytes, pixels: np.ndarray, spec: Preprocessing, work_dir: Path,
                         batch_size: int = 16) -> np.ndarray:
    """Through the runtime's own LiteRT backend (int8 I/O handled as on a device)."""
    path = work_dir / "tflite_int8_candidate.tflite"
    path.write_bytes(model)
    try:
        backend = open_backend(path, BackendOptions())
        return np.concatenate([backend.run(scale(pixels[s:s + batch_size], spec))[0]  # the class scores
                               for s in range(0, len(pixels), batch_size)])
    finally:
        path.unlink(missing_ok=True)


class _Quantizer:
    """One calibration, many quantizations: the converter calibrates once, `mlir_quantize` re-quantizes the
    calibrated model for each option set (seconds, where a calibration at 299 px takes minutes).

    These are the calls TensorFlow's `QuantizationDebugger` makes (tensorflow/lite/tools/optimize/debugging/
    python/debugger.py: calibrate-only conversion, then `convert.mlir_quantize` with the denylists), without
    what it adds for its own statistics and this search never used: a second quantization with numeric-verify
    ops and an interpreter over that model."""

    def __init__(self, saved_model: Path, representative):
        import tensorflow as tf
        from tensorflow.lite.python import convert

        converter = _converter(saved_model, representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_mlir_quantizer = True
        converter._experimental_calibrate_only = True  # the float model with the calibrated ranges
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.calibrated_model = converter.convert()
        self._mlir_quantize = convert.mlir_quantize

    def quantize(self, per_channel: bool, denylisted_nodes: list[str] | None = None) -> bytes:
        return self._mlir_quantize(self.calibrated_model, disable_per_channel=not per_channel, fully_quantize=False,
                                   enable_numeric_verify=False, denylisted_ops=list(FLOAT_OPS),
                                   denylisted_nodes=list(denylisted_nodes or []))

    def units(self) -> list[tuple[str, list[str]]]:
        """(label, output tensor names to denylist) per weighted op: the op and its activation's producer."""
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_content=self.calibrated_model)
        names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
        ops = interp._get_ops_details()  # the public API has no op list; TensorFlow's debugger uses the same call
        producer = {out: op for op in ops for out in op["outputs"]}
        units = []
        for op in ops:
            if op["op_name"] not in WEIGHTED_OPS or not op["outputs"]:
                continue
            nodes = [names[op["outputs"][0]]]
            source = producer.get(op["inputs"][0]) if len(op["inputs"]) else None
            if source is not None and source["outputs"]:
                nodes.append(names[source["outputs"][0]])
            units.append((names[op["outputs"][0]], nodes))
        return units


def tflite_int8_accuracy_aware(saved_model: Path, dst: Path, calib_pixels: np.ndarray,
                               val_pixels: np.ndarray | None, val_labels: np.ndarray | None, n_classes: int,
                               spec: Preprocessing, config: TfliteInt8Config | None = None,
                               work_dir: Path | None = None, reference: np.ndarray | None = None
                               ) -> TfliteInt8Report:
    """Write the int8 TFLite file at `dst` (float32 I/O, SOFTMAX float) and say which options and which float
    fallbacks made it, scored against the float model's outputs on the validation images: `reference` when the
    caller has them (the Keras model the SavedModel was exported from, already loaded), else the SavedModel's
    own (loading it again costs time)."""
    config = config or TfliteInt8Config()
    work_dir = work_dir or dst.parent
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    quantizer = _Quantizer(saved_model, representative_dataset(calib_pixels, spec))
    timings["calibration"] = time.perf_counter() - t0
    report = TfliteInt8Report(chosen="", why="", calibration_images=len(calib_pixels),
                              validation_images=0 if val_pixels is None else len(val_pixels), seconds=timings)
    label = {True: "per-channel", False: "per-tensor"}
    if val_pixels is None or len(val_pixels) == 0:
        per_channel = config.per_channel_options[0]
        model = quantizer.quantize(per_channel)
        report.chosen, report.why = label[per_channel], "no validation images to compare options on"
    else:
        t0 = time.perf_counter()
        if reference is None or len(reference) != len(val_pixels):
            reference = float_reference(saved_model, val_pixels, spec, config.batch_size)
        ref = score("float", reference, reference, val_labels, n_classes)
        report.reference = asdict(ref)
        scored: dict[bool, tuple[CandidateScore, bytes, np.ndarray]] = {}
        for per_channel in config.per_channel_options:
            model = quantizer.quantize(per_channel)
            probs = tflite_probabilities(model, val_pixels, spec, work_dir, config.batch_size)
            scored[per_channel] = (score(label[per_channel], probs, reference, val_labels, n_classes), model, probs)
            report.candidates.append(asdict(scored[per_channel][0]))
        per_channel = min(scored, key=lambda k: scored[k][0].loss_key(ref))
        best, model, probs = scored[per_channel]
        report.chosen = label[per_channel]
        report.why = "least loss against the float SavedModel on the validation images (agreement first)"
        timings["selection"] = time.perf_counter() - t0
        report.holds = not best.failures(ref, config.goal)
        if config.accuracy_aware and not report.holds:
            t0 = time.perf_counter()
            model = _fallback(report, quantizer, per_channel, probs, best, reference, ref, val_pixels, val_labels,
                              n_classes, spec, config, work_dir) or model
            timings["accuracy_aware"] = time.perf_counter() - t0
    dst.write_bytes(model)
    report.seconds = {k: round(v, 2) for k, v in timings.items()}
    return report


def _fallback(report: TfliteInt8Report, quantizer: _Quantizer, per_channel: bool, naive: np.ndarray,
              naive_score: CandidateScore, reference: np.ndarray, ref: CandidateScore, pixels: np.ndarray,
              labels: np.ndarray | None, n_classes: int, spec: Preprocessing, config: TfliteInt8Config,
              work_dir: Path) -> bytes | None:
    """The candidate that meets the goal with the fewest float units; when none does (the float cap or a stall
    stops the search), the one nearest the goal with the fewest float units, None meaning the naive int8 model:
    more float ops that did not help cost speed and size for nothing."""
    focus = focus_indices(naive, reference, config.probe_images)
    units = quantizer.units()
    if len(units) > config.max_probes:  # probe the units nearest the output first: the likeliest to flip
        units = units[-config.max_probes:] + units[:-config.max_probes]
    probes = []
    best, unmoved = float(np.mean(naive[focus].argmax(1) == reference[focus].argmax(1))), 0
    for unit, nodes in units[:config.max_probes]:
        probs = tflite_probabilities(quantizer.quantize(per_channel, nodes), pixels[focus], spec, work_dir)
        probe = score(unit, probs, reference[focus], None, n_classes)
        probes.append(asdict(Probe(unit, nodes, probe.agreement, probe.max_abs_diff, probe.mean_abs_diff)))
        best, unmoved = (probe.agreement, 0) if probe.agreement > best else (best, unmoved + 1)
        if unmoved >= config.probe_patience:
            break
    report.probes = probes
    ranked = [p["unit"] for p in sorted(probes, key=lambda p: (-p["agreement"], p["mean_abs_diff"]))]
    ranked += [u for u, _ in units[len(probes):]]
    nodes_of = dict(units)
    model, chosen = None, []
    nearest = NearestStep(naive_score.shortfall(ref, config.goal))
    for k in fallback_schedule(len(ranked)):
        if k > config.max_float_fraction * len(ranked):
            report.stopped = (f"the goal needs more than {config.max_float_fraction:.0%} of the weighted ops in "
                              f"float (int8 would lose its speed): the goal is NOT met; shipping "
                              f"{_shipped(chosen)}")
            break
        nodes = sorted({n for u in ranked[:k] for n in nodes_of[u]})
        candidate = quantizer.quantize(per_channel, nodes)
        current = score(f"{k} float", tflite_probabilities(candidate, pixels, spec, work_dir), reference, labels,
                        n_classes)
        fails = current.failures(ref, config.goal)
        missing = current.shortfall(ref, config.goal)
        report.steps.append({"float_units": k, "agreement": current.agreement, "accuracy": current.accuracy,
                             "macro_auc": current.macro_auc, "max_abs_diff": current.max_abs_diff,
                             "shortfall": missing, "goal_missed": fails})
        if not fails:
            model, chosen, report.holds = candidate, ranked[:k], True
            break
        if nearest.offer(k, missing):
            model, chosen = candidate, ranked[:k]
        elif nearest.stalled >= config.stall_steps:
            report.stopped = (f"{nearest.stalled} steps in a row brought the goal no closer (up to {k} float units): "
                              f"the goal is NOT met; shipping {_shipped(chosen)}")
            break
    by_unit = {p["unit"]: p for p in probes}
    for rank, unit in enumerate(chosen):
        probe = by_unit.get(unit)
        why = f"sensitivity rank {rank + 1} of {len(ranked)}"
        if probe:
            why += (f": with it (and its input's producer) float, the focus images' agreement became "
                    f"{probe['agreement']:.1%}")
        report.float_nodes.append({"unit": unit, "denylisted_nodes": nodes_of[unit], "why": why})
    return model


def _shipped(chosen: list[str]) -> str:
    return (f"the nearest candidate, {len(chosen)} unit(s) float" if chosen
            else "the int8 model without float fallbacks (no step came nearer the goal)")
