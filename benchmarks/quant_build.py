#!/usr/bin/env python
"""Build the 299 px InceptionV3 stand-in that benchmarks/quant_speed.py times: ONNX fp32 (tf2onnx) and
LiteRT int8 (the project's TFLite converter route), with random weights (latency does not depend on them).

Run in its own process (quant_speed.py starts it) so TensorFlow's threads never share a process with timings.

    python -m benchmarks.quant_build --work DIR [--image-size 299]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def calibration_pixels(count: int, size: int, seed: int = 0) -> object:
    """Smooth random images (uint8), not noise: blurred blobs give the layers realistic, spatially correlated
    activations for the calibration ranges."""
    import numpy as np

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(count, 8, 8, 3)).astype(np.float32)
    reps = -(-size // 8)
    big = np.repeat(np.repeat(small, reps, axis=1), reps, axis=2)[:, :size, :size]
    return np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)


def build(work: Path, size: int) -> None:
    import keras
    import numpy as np

    from tumor_edge.export.formats.onnx import export_onnx_fp32
    from tumor_edge.export.tflite_export import export_saved_model, export_tflite_int8

    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    t0 = time.perf_counter()
    if not (work / "model_fp32.onnx").is_file():
        export_onnx_fp32(model, size, size, work / "model_fp32.onnx")
        print(f"onnx fp32: {time.perf_counter() - t0:.1f} s", flush=True)
    saved = export_saved_model(model, work / "saved_model")
    pixels = calibration_pixels(16, size)
    np.save(work / "calibration_pixels.npy", pixels)

    def representative():  # the model rescales itself (scaling "none"): raw 0..255 floats in
        for i in range(len(pixels)):
            yield [pixels[i:i + 1].astype(np.float32)]

    t0 = time.perf_counter()
    export_tflite_int8(saved, work / "model_int8.tflite", representative)
    print(f"tflite int8: {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=299)
    args = parser.parse_args()
    build(args.work, args.image_size)


if __name__ == "__main__":
    main()
