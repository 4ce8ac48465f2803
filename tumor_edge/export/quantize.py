"""ONNX static int8 (QDQ, per-channel weights) with the calibration method chosen on the validation split.

Recipe (NOTES.md, re-measured on the export machine): `quant_pre_process`, then `quantize_static` in QDQ
format, uint8 activations, int8 weights, per-channel, `reduce_range` off (on VNNI/AMX/ARM-dot-product CPUs the
full 8-bit range is both faster and more accurate; `--reduce-range` is for AVX2-only targets). The classifier
head (pooling output -> MatMul/Add -> Softmax) stays in float: it is a few thousand MACs, and quantizing the
softmax output would round every probability to a multiple of 1/255. Padded average pools stay float too
(`float_average_pools`): onnxruntime's QLinearAveragePool costs 10x the float pool and ate the int8 speed-up.

Calibration runs the float model once over the training-split images and derives the ranges of all three
onnxruntime methods (MinMax, Entropy, Percentile) from that single pass instead of one pass per method: min/max
exactly, Entropy and Percentile from fixed-range histograms of a bounded sample of each tensor (see
`collect_ranges`). Each method's int8 model is then scored against the fp32 ONNX model on the validation split,
and the one that loses least is kept; the comparison goes into the bundle's metadata.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.progress import progress
from tumor_edge.runtime.preprocess import Preprocessing, scale

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Ops walked back through from the graph output to find the classifier head that stays float.
HEAD_OPS = frozenset({"Softmax", "MatMul", "Gemm", "Add", "Reshape", "Flatten", "Squeeze", "Identity", "Mul",
                      "Relu", "Sigmoid", "Cast", "Dropout"})
SAMPLES_PER_BATCH = 8192  # values kept per tensor and calibration batch for the histograms
# onnxruntime's Entropy default is 128 bins, widened as data arrives; TensorRT uses 2048. 512 bins over the exact
# range let the KL search try thresholds from a quarter of the range to all of it, at ~40 ms a tensor.
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128
PERCENTILE_BINS = 2048  # onnxruntime's default for Percentile


@dataclass
class QuantizationConfig:
    """How the ONNX int8 file is made; recorded in the bundle's metadata."""

    methods: tuple[str, ...] = CALIBRATION_METHODS
    per_channel: bool = True
    reduce_range: bool = False
    keep_head_float: bool = True
    float_average_pools: bool = True  # see float_average_pools(): a third of int8 latency otherwise
    batch_size: int = 4  # calibration batch: every tensor is a graph output, ~270 MB an image at 299 px
    percentile: float = 99.999
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in CALIBRATION_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"calibration methods must be among {', '.join(CALIBRATION_METHODS)}, "
                             f"not {', '.join(unknown) or 'none'}")


@dataclass
class CandidateScore:
    """One calibration method's int8 model against the fp32 ONNX model on the validation images."""

    method: str
    accuracy: float | None = None
    macro_auc: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    seconds: float = 0.0

    def loss_key(self, reference_accuracy: float, reference_auc: float | None) -> tuple[float, ...]:
        """Lexicographic: disagreement with fp32, accuracy lost, AUC lost, mean probability shift.

        Disagreement first: on a validation set of a few hundred images accuracy moves by single images in
        either direction (a flipped prediction can even gain), while agreement counts every decision the
        quantization changed, and a method cannot lose more accuracy than it flips (measured on demo data:
        Percentile won on validation accuracy by one image yet flipped twice as many as MinMax).
        """
        acc_drop = max(0.0, reference_accuracy - (self.accuracy or 0.0))
        auc_drop = max(0.0, (reference_auc or 0.0) - (self.macro_auc or 0.0)) if reference_auc is not None else 0.0
        return (round(1.0 - (self.agreement or 0.0), 9), round(acc_drop, 9), round(auc_drop, 9),
                self.mean_abs_diff or 0.0)


@dataclass
class QuantizationReport:
    chosen: str
    why: str
    config: dict[str, Any]
    calibration_images: int
    validation_images: int
    reference: dict[str, Any] = field(default_factory=dict)  # fp32 ONNX on the validation images
    candidates: list[CandidateScore] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidates"] = [asdict(c) for c in self.candidates]
        return data


# ------------------------------------------------------------------------------------------- calibration


def _scaled_batches(pixels: np.ndarray, spec: Preprocessing, batch_size: int):
    for start in range(0, len(pixels), batch_size):
        yield scale(pixels[start:start + batch_size], spec)


def _ort_calibration():
    """onnxruntime's calibration internals print to stdout; keep stdout clean for results."""
    return contextlib.redirect_stdout(io.StringIO())


def _next_prime(n: int) -> int:
    """Strides that are prime cannot lock onto one channel of an NHWC tensor (channel counts are composite)."""
    n = max(2, n)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def _sample(flat: np.ndarray, batch_index: int, cap: int) -> np.ndarray:
    if flat.size <= cap:
        return flat.copy()
    stride = _next_prime(-(-flat.size // cap))
    return np.ascontiguousarray(flat[batch_index % stride::stride])


def entropy_threshold(histogram: tuple, num_quantized_bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's KL-divergence threshold search (`HistogramCollector.get_entropy_threshold`), vectorised.

    Same candidates, same integer arithmetic, same smoothing and divergence (onnxruntime's own functions), so the
    result is identical; but the per-bin Python `sum` loops become numpy reductions, which makes 512-bin
    histograms affordable for every tensor of a model (measured 4-5x faster, identical thresholds).
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges, min_value, max_value = histogram[0], histogram[1], histogram[2], histogram[3]
    hist = np.asarray(hist, dtype=np.int64)
    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    cumulative = np.concatenate([[0], np.cumsum(hist)])
    total = cumulative[-1]
    best_index, best_div = None, np.inf
    candidates = []
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        candidates.append((edges[start], edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cumulative[start]
        p[-1] += total - cumulative[end]
        nonzeros = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[body:].sum()
        norm = nonzeros[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        values = np.zeros(num_quantized_bins, dtype=np.int64)
        has = norm != 0
        values[has] = (quantized[has] / norm[has]).astype(np.int64)  # onnxruntime assigns into int64: truncates
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(values, merged)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        div = np.inf if ps is None or qs is None else float(entropy(ps, qs))
        if best_index is None or div < best_div:  # first minimum, as np.argmin in onnxruntime
            best_index, best_div = len(candidates) - 1, div
    low, high = candidates[best_index]
    dtype = edges.dtype
    low, high = np.array(low, dtype=dtype), np.array(high, dtype=dtype)
    if low < min_value:
        low = min_value
    if high > max_value:
        high = max_value
    return low, high


def collect_ranges(model_path: Path, pixels: np.ndarray, spec: Preprocessing, config: QuantizationConfig,
                   work_dir: Path, show_progress: bool = True) -> dict[str, Any]:
    """{method: TensorsData} for every requested method, from one pass of the float model over `pixels`.

    Min/max are exact over all values. Entropy and Percentile use histograms with a fixed range (the exact
    min/max, known only after the pass), built from up to SAMPLES_PER_BATCH values per tensor and batch (all
    values of small tensors, a prime-strided sample of large ones). onnxruntime's own collectors instead widen
    their histograms batch by batch, which makes the result depend on image order and, for Entropy, the
    threshold search cost grow quadratically with the widened bin count.
    """
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        HistogramCalibrater,
        HistogramCollector,
        TensorsData,
    )

    augmented = work_dir / "calibration_augmented.onnx"
    calibrater = HistogramCalibrater(model_path, augmented_model_path=str(augmented))
    calibrater.augment_graph()  # every float tensor becomes a graph output
    tensors = set(calibrater.tensors_to_calibrate)
    del calibrater
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fusions keep graph outputs intact
    so.log_severity_level = 3
    session = ort.InferenceSession(str(augmented), so, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    want_histograms = any(m in config.methods for m in ("entropy", "percentile"))
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {}
    n_batches = -(-len(pixels) // config.batch_size)
    batches = _scaled_batches(pixels, spec, config.batch_size)
    for i, batch in enumerate(progress(batches, "calibrating onnx int8", length=n_batches, enabled=show_progress)):
        for name, value in zip(names, session.run(None, {input_name: batch})):
            if name not in tensors:
                continue
            flat = np.asarray(value, dtype=np.float32).reshape(-1)
            if flat.size == 0:
                continue
            lows[name] = min(lows.get(name, np.inf), float(flat.min()))
            highs[name] = max(highs.get(name, -np.inf), float(flat.max()))
            if want_histograms:
                samples.setdefault(name, []).append(_sample(flat, i, SAMPLES_PER_BATCH))
    del session
    augmented.unlink(missing_ok=True)
    ranges: dict[str, Any] = {}
    if "minmax" in config.methods:
        ranges["minmax"] = TensorsData(CalibrationMethod.MinMax, {
            name: (np.array(lows[name], dtype=np.float32), np.array(highs[name], dtype=np.float32))
            for name in lows})
    if not want_histograms:
        return ranges
    entropy_result, percentile_hists = {}, {}
    for name, parts in samples.items():
        values = np.concatenate(parts)
        low, high = np.float32(lows[name]), np.float32(highs[name])
        if "entropy" in config.methods:
            t = np.float32(max(abs(low), abs(high)))
            hist, edges = np.histogram(values, ENTROPY_BINS, range=(-t, t) if t > 0 else None)
            histogram = (hist, edges.astype(np.float32), low, high, t)
            entropy_result[name] = (*entropy_threshold(histogram, ENTROPY_QUANTIZED_BINS), hist, histogram[1])
        if "percentile" in config.methods:
            hist, edges = np.histogram(np.abs(values), PERCENTILE_BINS)
            percentile_hists[name] = (hist, edges.astype(np.float32), low, high)
    if "entropy" in config.methods:
        ranges["entropy"] = TensorsData(CalibrationMethod.Entropy, entropy_result)
    if "percentile" in config.methods:
        collector = HistogramCollector("percentile", True, PERCENTILE_BINS, ENTROPY_QUANTIZED_BINS,
                                       config.percentile, "same")
        collector.histogram_dict = percentile_hists
        with _ort_calibration():
            ranges["percentile"] = TensorsData(CalibrationMethod.Percentile, collector.compute_percentile())
    return ranges


# --------------------------------------------------------------------------------------------- quantizing


def head_nodes(model) -> list[str]:
    """Names of the nodes between the last feature op (pooling) and the graph output: the classifier head."""
    producers = {out: node for node in model.graph.node for out in node.output}
    head: list[str] = []
    frontier = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.name in seen or node.op_type not in HEAD_OPS:
            continue
        seen.add(node.name)
        head.append(node.name)
        frontier.extend(node.input)
    return head


def _valid_counts(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> np.ndarray:
    out = (size + pad_begin + pad_end - kernel) // stride + 1
    return np.array([min(i * stride - pad_begin + kernel, size) - max(i * stride - pad_begin, 0)
                     for i in range(out)], dtype=np.float32)


def float_average_pools(model) -> list[str]:
    """Rewrite padded AveragePool nodes so they stay float and fast; return the node names to keep float.

    Measured on InceptionV3 (299 px, onnxruntime 1.32, 1 thread): the 9 QLinearAveragePool kernels that
    onnxruntime fuses DQ -> AveragePool -> Q into cost 25-39 ms a run, a third of the int8 model's time (the fp32
    AveragePool: 2 ms). Merely excluding AveragePool from quantization does not help: the optimizer fuses the
    DQ/Q pair around it anyway. So each `count_include_pad=0` pool becomes an equal `count_include_pad=1` pool
    times a constant per-position correction (kernel area / valid inputs), both excluded from quantization:
    no Q follows the pool, nothing fuses, the pool runs in float (NCHWc) and only the convolutions run in int8.
    Outputs are unchanged (max |diff| 0 on InceptionV3); int8 latency fell from 36-40 to 27-32 ms.
    """
    from onnx import helper, numpy_helper

    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.input)}
    nodes, keep_float = [], []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0]) if node.op_type == "AveragePool" else None
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if (shape is None or len(shape) != 4 or not all(shape[2:]) or attrs.get("count_include_pad", 0)
                or not any(pads) or len(pads) != 4 or attrs.get("ceil_mode", 0)):
            nodes.append(node)
            continue
        (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", [1, 1])
        counts = np.outer(_valid_counts(shape[2], kh, sh, pads[0], pads[2]),
                          _valid_counts(shape[3], kw, sw, pads[1], pads[3]))
        correction = f"{node.name}__pad_correction"
        model.graph.initializer.append(numpy_helper.from_array(
            ((kh * kw) / counts).reshape(1, 1, *counts.shape).astype(np.float32), correction))
        output = node.output[0]
        node.output[0] = f"{output}__sum_over_area"
        for attr in [a for a in node.attribute if a.name == "count_include_pad"]:
            node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute("count_include_pad", 1))
        mul = helper.make_node("Mul", [node.output[0], correction], [output], name=f"{node.name}__pad_correct")
        nodes += [node, mul]
        keep_float += [node.name, mul.name]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return keep_float


def preprocess_for_quantization(src: Path, dst: Path) -> Path:
    """onnxruntime's `quant_pre_process`: symbolic shape inference and graph clean-up (needs sympy)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))
    return dst


def quantize_with_ranges(src: Path, dst: Path, method: str, tensors_range, config: QuantizationConfig,
                         exclude: Sequence[str], work_dir: Path) -> Path:
    """QDQ int8 with precomputed ranges, via `quantize_static`'s calibration cache."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = work_dir / f"calibration_{method}.json"
    save_tensors_data(tensors_range, cache)
    method_enum = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}[method]
    with _ort_calibration():
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                        reduce_range=config.reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method_enum,
                        nodes_to_exclude=list(exclude), calibration_cache_path=str(cache))
    return dst


# ---------------------------------------------------------------------------------------------- selection


def _onnx_probabilities(path: Path, pixels: np.ndarray, spec: Preprocessing, batch_size: int) -> np.ndarray:
    """The runtime's own onnxruntime backend (optimisation level 'all', as on a device) over scaled pixels."""
    from tumor_edge.runtime.backends import BackendOptions, open_backend

    backend = open_backend(path, BackendOptions())
    return np.concatenate([backend.run(batch) for batch in _scaled_batches(pixels, spec, batch_size)])


def _score(method: str, probs: np.ndarray, reference: np.ndarray, labels: np.ndarray,
           n_classes: int) -> CandidateScore:
    from tumor_edge.metrics import one_vs_rest_auc

    _, auc = one_vs_rest_auc(labels, probs, n_classes)
    diff = np.abs(probs - reference)
    return CandidateScore(method, accuracy=float(np.mean(probs.argmax(1) == labels)), macro_auc=auc,
                          agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
                          max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))


def quantize_onnx_int8(fp32_path: Path, dst: Path, calib_pixels: np.ndarray, val_pixels: np.ndarray | None,
                       val_labels: np.ndarray | None, n_classes: int, spec: Preprocessing,
                       config: QuantizationConfig, work_dir: Path, show_progress: bool = True
                       ) -> QuantizationReport:
    """Write the int8 ONNX file at `dst` and say how it was made and why that calibration method won."""
    import onnx

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = preprocess_for_quantization(fp32_path, work_dir / "model_fp32.pre.onnx")
    model = onnx.load(str(prepared))
    exclude = head_nodes(model) if config.keep_head_float else []
    if config.float_average_pools:
        exclude += float_average_pools(model)
        onnx.save(model, str(prepared))
    timings["pre_process"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranges = collect_ranges(prepared, calib_pixels, spec, config, work_dir, show_progress)
    timings["calibration"] = time.perf_counter() - t0
    report = QuantizationReport(chosen="", why="", config=asdict(config), calibration_images=len(calib_pixels),
                                validation_images=0 if val_pixels is None else len(val_pixels),
                                float_nodes=exclude, seconds=timings)
    candidates: dict[str, Path] = {}
    for method in config.methods:
        t0 = time.perf_counter()
        candidates[method] = quantize_with_ranges(prepared, work_dir / f"model_int8_{method}.onnx", method,
                                                  ranges[method], config, exclude, work_dir)
        timings[f"quantize_{method}"] = time.perf_counter() - t0
    if len(candidates) == 1 or val_pixels is None or len(val_pixels) == 0:
        chosen = config.methods[0] if len(candidates) == 1 else "minmax" if "minmax" in candidates \
            else config.methods[0]
        report.chosen = chosen
        report.why = ("only method asked for" if len(candidates) == 1
                      else "no validation images to compare methods on; MinMax is onnxruntime's default")
    else:
        t0 = time.perf_counter()
        reference = _onnx_probabilities(fp32_path, val_pixels, spec, config.batch_size)
        ref = _score("fp32", reference, reference, val_labels, n_classes)
        report.reference = asdict(ref)
        for method, path in candidates.items():
            t1 = time.perf_counter()
            probs = _onnx_probabilities(path, val_pixels, spec, config.batch_size)
            score = _score(method, probs, reference, val_labels, n_classes)
            score.seconds = round(time.perf_counter() - t1, 2)
            report.candidates.append(score)
        best = min(report.candidates, key=lambda c: c.loss_key(ref.accuracy or 0.0, ref.macro_auc))
        report.chosen = best.method
        report.why = ("least loss against fp32 ONNX on the validation images (top-1 agreement, then accuracy, "
                      "then macro AUC, then mean probability shift)")
        timings["selection"] = time.perf_counter() - t0
    candidates[report.chosen].replace(dst)
    for path in candidates.values():
        path.unlink(missing_ok=True)
    report.seconds = {k: round(v, 2) for k, v in timings.items()}
    return report
