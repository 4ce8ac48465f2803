"""TFLite files through the route that works with Keras 3: `model.export()` to a SavedModel (written once per
export), then `tf.lite.TFLiteConverter.from_saved_model` (fp32, fp16 weights, and int8)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

FLOAT_OPS = ("SOFTMAX",)  # op types an int8 TFLite file keeps in float by default


def export_saved_model(model, dst: Path) -> Path:
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
    """int8 TFLite from `representative`, [float32 (1, H, W, 3)] batches of the training split scaled as the
    model expects. Default: every op int8 but the final SOFTMAX, with float32 input and output: a full-integer
    softmax rounds probabilities to multiples of 1/256, so confident predictions tie and the macro AUC drops.
    `full_integer=True`: int8 input and output, TFLITE_BUILTINS_INT8 only, for accelerators that need it."""
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
