"""TFLite files through the route that works with Keras 3: `model.export()` to a SavedModel, then
`tf.lite.TFLiteConverter.from_saved_model` (fp32, fp16 weights, and int8).

The SavedModel is written once per export and shared by the three conversions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

# Op types an int8 TFLite file keeps in float by default (see export_tflite_int8).
FLOAT_OPS = ("SOFTMAX",)


def export_saved_model(model, dst: Path) -> Path:
    """Keras 3's own SavedModel export (serving signature with a dynamic batch)."""
    model.export(str(dst), format="tf_saved_model", verbose=False)
    return dst


def _converter(saved_model: Path):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model))


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
    """int8 TFLite from a representative dataset of the training split.

    Default: every op int8 except the final SOFTMAX, which stays float (float32 input and output tensors, a
    QUANTIZE op first). A full-integer softmax rounds probabilities to multiples of 1/256, so every confident
    prediction ties at 0 or 0.996 and the macro AUC drops (measured on the toy run: -0.012, against -0.000 with
    the float softmax); the softmax is 4 values, so keeping it float costs nothing. `full_integer=True` gives the
    strict variant (int8 input and output tensors, TFLITE_BUILTINS_INT8 only) for accelerators that need it.

    `representative` yields [float32 (1, H, W, 3)] batches already scaled as the model expects. The runtime's
    LiteRT backend quantizes float input / dequantizes int8 output with the file's own scale and zero point.
    """
    import tensorflow as tf

    converter = _converter(saved_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    if full_integer:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return _write(converter.convert(), dst)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # Selective quantization: TensorFlow's public (experimental) route to leave named op types in float.
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(FLOAT_OPS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the debugger's internal tf.lite.Interpreter warns it is deprecated
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative,
                                                             debug_options=options)
        data = debugger.get_nondebug_quantized_model()
    return _write(data, dst)


# ------------------------------------------------------------------------------------- background int8 job
# TFLite's calibrator runs the float model single-threaded with logging kernels: ~0.6 CPU-s per 299 px image,
# two minutes for 200 images, the longest step of an export. It holds the GIL, so a thread would not overlap it
# with the ONNX work; a spawned process does, on the core the rest of the export leaves idle much of the time.


def _int8_worker(saved_model: str, pixels_npy: str, spec: dict, dst: str, full_integer: bool,
                 result_file: str) -> None:
    import json
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tumor_edge.runtime.preprocess import Preprocessing, scale

    try:
        pixels = np.load(pixels_npy)
        preprocessing = Preprocessing.from_dict(spec)

        def representative():
            for i in range(len(pixels)):
                yield [scale(pixels[i:i + 1], preprocessing)]

        export_tflite_int8(Path(saved_model), Path(dst), representative, full_integer)
        outcome = {"ok": True}
    except Exception as err:  # reported to the parent as the step's failure line
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        outcome = {"ok": False, "error": f"{type(err).__name__}: {lines[0][:200] if lines else ''}"}
    Path(result_file).write_text(json.dumps(outcome))


class BackgroundInt8:
    """`export_tflite_int8` in a spawned process; `wait()` raises with the child's error line if it failed."""

    def __init__(self, saved_model: Path, pixels_npy: Path, spec: dict, dst: Path, full_integer: bool):
        import multiprocessing

        self.result_file = Path(str(dst) + ".result.json")
        self.result_file.unlink(missing_ok=True)
        self.dst = dst
        context = multiprocessing.get_context("spawn")  # fork after TensorFlow has started threads is unsafe
        self.process = context.Process(
            target=_int8_worker, daemon=True, name="tumor-edge-tflite-int8",
            args=(str(saved_model), str(pixels_npy), spec, str(dst), full_integer, str(self.result_file)))
        self.process.start()

    def wait(self) -> None:
        import json

        self.process.join()
        try:
            outcome = json.loads(self.result_file.read_text())
        except (OSError, ValueError):
            outcome = {"ok": False, "error": f"converter process died (exit code {self.process.exitcode})"}
        finally:
            self.result_file.unlink(missing_ok=True)
        if not outcome.get("ok"):
            raise RuntimeError(outcome.get("error") or "TFLite int8 conversion failed")

    def cancel(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self.result_file.unlink(missing_ok=True)
