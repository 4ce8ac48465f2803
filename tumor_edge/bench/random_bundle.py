"""A stand-in bundle for latency work: the real architecture with random weights, exported to every format.

Latency does not depend on the weights' values, so the standard suite (and the bench tests) need no training:
build the classifier untrained, save it as a run folder, export it. When the export engineer's
`tumor_edge.export.exporter.export_bundle` is installed the suite uses it (with parity off: random weights
prove nothing); this module's own conversion (tf2onnx, TFLiteConverter, onnxruntime static quantization) is
the fallback and the tests' quick path. TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tumor_edge.bench.inputs import synthetic_pool
from tumor_edge.contracts.bundle import BundleMetadata, ModelEntry, describe_file
from tumor_edge.runtime.preprocess import Preprocessing

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
ALL_FILES = ("model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_fp16.tflite", "model_int8.tflite")
RANDOM_NOTE = "random weights (latency benchmark stand-in): predictions are meaningless"


def build_random_model(image_size: int, num_classes: int = len(CLASSES), seed: int = 0):
    """The project's classifier (tumor_edge.train.model.build_classifier) with random weights."""
    import keras

    keras.utils.set_random_seed(seed)
    try:
        from tumor_edge.train.model import build_classifier
    except ImportError:  # the train package is optional for bench; keep the same architecture by hand
        inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
        base = keras.applications.InceptionV3(include_top=False, weights=None,
                                              input_shape=(image_size, image_size, 3))
        x = keras.layers.GlobalAveragePooling2D()(base(x))
        outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
        return keras.Model(inputs, outputs)
    return build_classifier(num_classes, image_size, weights=None)


def write_random_run(run_dir: Path, image_size: int, classes: Sequence[str] = CLASSES, seed: int = 0,
                     data_root: Path | None = None) -> Path:
    """A run folder (model.keras + config.json) holding an untrained classifier.

    With `data_root` (a dataset folder with Training/ and Testing/) it also gets a split.json, so export finds
    calibration images and bench feeds the test split, as with a trained run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_random_model(image_size, len(classes), seed)
    model.save(run_dir / "model.keras")
    spec = Preprocessing(image_size, image_size, "bilinear", "none")
    config = {"classes": list(classes), "image_size": image_size, "preprocessing": spec.to_dict(),
              "weights": None, "note": RANDOM_NOTE}
    if data_root is not None:
        from tumor_edge.data.dataset import discover, stratified_split, write_split

        index = discover(data_root)
        if list(index.classes) != list(classes):
            raise ValueError(f"{data_root}: classes {index.classes} differ from {list(classes)}")
        train, val = stratified_split(index.train, 0.25, seed)
        write_split(run_dir / "split.json", Path(data_root), index.classes,
                    {"train": train, "val": val, "test": index.test}, seed, 0.25)
        config["data_root"] = str(Path(data_root).resolve())
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir


def _calibration(spec: Preprocessing, count: int) -> np.ndarray:
    return synthetic_pool(spec, count, seed=1).model_inputs(spec)


def _onnx_fp32(model, out: Path, spec: Preprocessing, calib: np.ndarray) -> None:
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, spec.height, spec.width, 3), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=17, output_path=str(out))


def _onnx_int8(model, out: Path, spec: Preprocessing, calib: np.ndarray) -> None:
    """Static QDQ int8 (NOTES.md recipe); reduce_range only where the CPU lacks VNNI (avoids u8 saturation)."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tumor_edge.machine import cpu_flag_set

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(calib)

        def get_next(self) -> dict | None:
            x = next(self._it, None)
            return None if x is None else {"image": x[None]}

    vnni = bool(cpu_flag_set() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = out.with_name("model_fp32.onnx")
        if not fp32.is_file():  # the bundle has no fp32 file: convert one to quantize from
            fp32 = Path(tmp) / "fp32.onnx"
            _onnx_fp32(model, fp32, spec, calib)
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(fp32), str(prep))
        quantize_static(str(prep), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=False,
                        reduce_range=not vnni, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def _tflite(kind: str) -> Callable:
    def convert(model, out: Path, spec: Preprocessing, calib: np.ndarray) -> None:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if kind == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif kind == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x[None]] for x in calib)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        out.write_bytes(converter.convert())
    return convert


# file name -> (format, precision, converter). A registry: a new format is one entry.
CONVERTERS: dict[str, tuple[str, str, Callable]] = {
    "model_fp32.onnx": ("onnx", "fp32", _onnx_fp32),
    "model_int8.onnx": ("onnx", "int8", _onnx_int8),
    "model_fp32.tflite": ("tflite", "fp32", _tflite("fp32")),
    "model_fp16.tflite": ("tflite", "fp16", _tflite("fp16")),
    "model_int8.tflite": ("tflite", "int8", _tflite("int8")),
}


def export_random_bundle(run_dir: Path, bundle_dir: Path, files: Sequence[str] = ALL_FILES,
                         calibration_count: int = 16, log: Callable[[str], None] | None = None) -> Path:
    """Convert the run's model.keras to `files` in bundle_dir and write metadata.json (no parity: random)."""
    import keras

    run_dir, bundle_dir = Path(run_dir), Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((run_dir / "config.json").read_text())
    spec = Preprocessing.from_dict(config["preprocessing"])
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    calib = _calibration(spec, calibration_count)
    models: dict[str, ModelEntry] = {}
    for name in files:
        fmt, precision, convert = CONVERTERS[name]
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the TFLite converter prints every captured tensor
            convert(model, bundle_dir / name, spec, calib)
        models[name] = describe_file(bundle_dir / name, fmt, precision)
        if log:
            log(f"exported {name} in {time.perf_counter() - start:.0f} s")
    metadata = BundleMetadata(classes=list(config["classes"]), preprocessing=spec, models=models,
                              provenance={"run_dir": str(run_dir.resolve()), "note": RANDOM_NOTE})
    metadata.write(bundle_dir)
    return bundle_dir
