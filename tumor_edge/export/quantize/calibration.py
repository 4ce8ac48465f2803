"""Calibration ranges for all three onnxruntime methods (MinMax, Entropy, Percentile) from ONE pass of the
float model over the calibration images, instead of one pass per method.

Min/max are exact; Entropy and Percentile come from fixed-range histograms of a bounded sample of each tensor
(see `collect_ranges`). The result plugs into `quantize_static` through its calibration cache.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.export.quantize.config import QuantizationConfig
from tumor_edge.progress import progress
from tumor_edge.runtime import Preprocessing, scale

SAMPLES_PER_BATCH = 8192  # values kept per tensor and calibration batch for the histograms
# onnxruntime's Entropy default is 128 bins, widened as data arrives; TensorRT uses 2048. 512 bins over the exact
# range let the KL search try thresholds from a quarter of the range to all of it, affordably per tensor.
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128
PERCENTILE_BINS = 2048  # onnxruntime's default for Percentile


def scaled_batches(pixels: np.ndarray, spec: Preprocessing, batch_size: int):
    for start in range(0, len(pixels), batch_size):
        yield scale(pixels[start:start + batch_size], spec)


def session(model):
    """An onnxruntime CPU session at level 'all' for a model file, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def quiet_stdout():
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
    histograms affordable for every tensor of a model.
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges, min_value, max_value = np.asarray(histogram[0], dtype=np.int64), *histogram[1:4]
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
    low, high = (np.array(v, dtype=edges.dtype) for v in candidates[best_index])
    return (min_value if low < min_value else low), (max_value if high > max_value else high)


def collect_ranges(model_path: Path, pixels: np.ndarray, spec: Preprocessing, config: QuantizationConfig,
                   work_dir: Path, show_progress: bool = True) -> dict[str, Any]:
    """{method: TensorsData} for every requested method, from one pass of the float model over `pixels`.

    Min/max are exact over all values. Entropy and Percentile use histograms with a fixed range (the exact
    min/max, known only after the pass), built from up to SAMPLES_PER_BATCH values per tensor and batch (all
    values of small tensors, a prime-strided sample of large ones). onnxruntime's own collectors instead widen
    their histograms batch by batch, which makes the result depend on image order and, for Entropy, the
    threshold search cost grow quadratically with the widened bin count.
    """
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
    sess = session(augmented)  # level 'all': its fusions keep graph outputs intact
    input_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    want_histograms = any(m in config.methods for m in ("entropy", "percentile"))
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {}
    n_batches = -(-len(pixels) // config.batch_size)
    batches = scaled_batches(pixels, spec, config.batch_size)
    for i, batch in enumerate(progress(batches, "calibrating onnx int8", length=n_batches, enabled=show_progress)):
        for name, value in zip(names, sess.run(None, {input_name: batch})):
            if name not in tensors:
                continue
            flat = np.asarray(value, dtype=np.float32).reshape(-1)
            if flat.size == 0:
                continue
            lows[name] = min(lows.get(name, np.inf), float(flat.min()))
            highs[name] = max(highs.get(name, -np.inf), float(flat.max()))
            if want_histograms:
                samples.setdefault(name, []).append(_sample(flat, i, SAMPLES_PER_BATCH))
    del sess
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
        # float64: a tensor whose float32 values span a few ulps (a nearly constant activation) leaves numpy no
        # room for finite float32 bins ("Too many bins for data range"); the edges go back to float32 below.
        values = np.concatenate(parts).astype(np.float64)
        low, high = np.float32(lows[name]), np.float32(highs[name])
        if "entropy" in config.methods:
            t = np.float32(max(abs(low), abs(high)))
            hist, edges = np.histogram(values, ENTROPY_BINS, range=(-float(t), float(t)) if t > 0 else None)
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
        with quiet_stdout():
            ranges["percentile"] = TensorsData(CalibrationMethod.Percentile, collector.compute_percentile())
    return ranges
