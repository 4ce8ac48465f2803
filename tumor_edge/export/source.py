"""What is being exported: a training run folder, or a Keras/SavedModel classifier made elsewhere.

Everything downstream (converters, quantization, parity) works from one `ModelSource`: a Keras model that yields
probabilities, the class names in output order, the preprocessing the bundle will declare, the preprocessing
the Keras reference is evaluated with, and the labelled images to calibrate, select and test on. A run folder
says all of this itself; for a foreign model the user says it with flags and we check what can be checked
(class count against the output width, image size against the input shape, probabilities against logits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.data.dataset import TEST_DIR, TRAIN_DIR, Sample, read_split, stratified_split
from tumor_edge.errors import DatasetError, ModelError, TumorEdgeError
from tumor_edge.export.samples import SampleSet, folder_samples, require_images
from tumor_edge.runtime.preprocess import RESIZE_METHODS, SCALINGS, Preprocessing

RUN_MODEL = "model.keras"
RUN_CONFIG = "config.json"
RUN_SPLIT = "split.json"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
OUTPUT_TYPES = ("auto", "probabilities", "logits")
# Share of a foreign model's --calib-data held out to choose the calibration method on.
FOREIGN_VAL_FRACTION = 0.2


@dataclass
class SourceOptions:
    """What the user tells export about the model (all optional for a run folder)."""

    classes: list[str] | None = None  # in output order
    image_size: int | None = None
    preprocess: str | None = None  # a scaling name of runtime.preprocess.SCALINGS
    resize: str | None = None  # a resize method of runtime.preprocess.RESIZE_METHODS
    output: str = "auto"  # "auto" | "probabilities" | "logits"
    calib_data: Path | None = None
    test_data: Path | None = None
    seed: int = 0


@dataclass
class ModelSource:
    path: Path
    kind: str  # "run" | "keras" | "savedmodel"
    model: Any  # keras.Model whose output is probabilities (a softmax is appended to logit models)
    classes: list[str]
    preprocessing: Preprocessing  # what the bundle declares and the runtime applies
    reference_preprocessing: Preprocessing  # what the Keras reference is evaluated with (the training pipeline)
    source_output: str  # what the original model outputs: "probabilities" | "logits"
    output_decided_by: str
    sha256: str
    run_dir: Path | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    calibration: SampleSet | None = None  # training images
    validation: SampleSet | None = None  # held-out training images (choice of calibration method)
    test: SampleSet | None = None  # parity
    warnings: list[str] = field(default_factory=list)

    @property
    def softmax_appended(self) -> bool:
        return self.source_output == "logits"


def load_source(path: str | Path, options: SourceOptions) -> ModelSource:
    """Load a run folder, a .keras/.h5 file or a SavedModel folder, with its samples; one-line errors."""
    path = Path(path)
    if options.output not in OUTPUT_TYPES:
        raise TumorEdgeError(f"--output must be one of {', '.join(OUTPUT_TYPES)}, not {options.output!r}")
    if not path.exists():
        raise ModelError("no such run folder or model file", path)
    if path.is_dir() and (path / RUN_MODEL).is_file() and (path / RUN_CONFIG).is_file():
        source = _load_run(path, options)
    elif path.is_dir() and (path / "saved_model.pb").is_file():
        source = _load_foreign(path, "savedmodel", options)
    elif path.is_dir():
        raise ModelError(f"not a run folder (no {RUN_MODEL} + {RUN_CONFIG}) nor a SavedModel (no saved_model.pb)",
                         path)
    elif path.suffix.lower() in KERAS_SUFFIXES:
        source = _load_foreign(path, "keras", options)
    else:
        raise ModelError(f"unsupported model file; expected a run folder, {', '.join(KERAS_SUFFIXES)} "
                         "or a SavedModel folder", path)
    return source


# ----------------------------------------------------------------------------------------------- run folders


def _load_run(run_dir: Path, options: SourceOptions) -> ModelSource:
    config_path = run_dir / RUN_CONFIG
    try:
        config = json.loads(config_path.read_text())
        classes = [str(c) for c in config["classes"]]
        trained_spec = Preprocessing.from_dict(config["preprocessing"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"unreadable run config ({err})", config_path) from err
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"run config lacks a valid 'classes'/'preprocessing' ({err})", config_path) from err
    if options.classes and list(options.classes) != classes:
        raise ModelError(f"--classes {','.join(options.classes)} differ from the run's classes "
                         f"{','.join(classes)}", config_path)
    if options.image_size and options.image_size != trained_spec.height:
        raise ModelError(f"--image-size {options.image_size} differs from the run's {trained_spec.height}",
                         config_path)
    model_path = run_dir / RUN_MODEL
    model = _load_keras(model_path)
    warnings: list[str] = []
    bundle_spec = trained_spec
    # An explicit --preprocess/--resize overrides what the bundle declares; the Keras reference keeps the
    # training pipeline's, so parity shows at once whether the override was a mistake.
    if options.preprocess and options.preprocess != trained_spec.scaling:
        bundle_spec = replace(bundle_spec, scaling=_check_choice(options.preprocess, SCALINGS, "--preprocess"))
        warnings.append(f"--preprocess {options.preprocess} overrides the run's training scaling "
                        f"'{trained_spec.scaling}'; parity will show whether the model agrees")
    if options.resize and options.resize != trained_spec.resize:
        bundle_spec = replace(bundle_spec, resize=_check_choice(options.resize, RESIZE_METHODS, "--resize"))
        warnings.append(f"--resize {options.resize} overrides the run's training resize "
                        f"'{trained_spec.resize}'; parity will show whether the model agrees")
    declared = str(config.get("output", "probabilities"))
    output = options.output if options.output != "auto" else declared
    _check_io(model, model_path, classes, trained_spec)
    split_path = run_dir / RUN_SPLIT
    calibration = validation = test = None
    if split_path.is_file():
        try:
            _, train = read_split(split_path, "train")
            _, val = read_split(split_path, "val")
            _, test_samples = read_split(split_path, "test")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"unreadable split file ({err})", split_path) from err
        calibration = SampleSet(train, f"training split of {split_path}")
        validation = SampleSet(val, f"validation split of {split_path}") if val else None
        test = SampleSet(test_samples, f"test split of {split_path}")
    if options.calib_data:
        calibration, validation = _calibration_from_folder(options.calib_data, classes, options.seed,
                                                           keep_validation=validation)
    if options.test_data:
        test = _test_from_folder(options.test_data, classes)
    source = ModelSource(
        path=run_dir, kind="run", model=model, classes=classes, preprocessing=bundle_spec,
        reference_preprocessing=trained_spec, source_output="probabilities", output_decided_by="run config",
        sha256=sha256_file(model_path), run_dir=run_dir, run_config=config, calibration=calibration,
        validation=validation, test=test, warnings=warnings)
    return _settle_output(source, output, "run config" if options.output == "auto" else "--output")


# ------------------------------------------------------------------------------------------- foreign models


def _load_foreign(path: Path, kind: str, options: SourceOptions) -> ModelSource:
    if not options.classes:
        raise ModelError("a model from outside a run needs --classes (names in output order)", path)
    if not options.preprocess:
        raise ModelError(f"a model from outside a run needs --preprocess ({', '.join(SCALINGS)})", path)
    scaling = _check_choice(options.preprocess, SCALINGS, "--preprocess")
    resize = _check_choice(options.resize or "bilinear", RESIZE_METHODS, "--resize")
    model = _load_keras(path) if kind == "keras" else _load_saved_model(path, options.image_size)
    height, width = _input_hw(model, path)
    if height is None or width is None:
        if not options.image_size:
            raise ModelError("the model's input size is not fixed: pass --image-size", path)
        height = width = options.image_size
    elif options.image_size and (options.image_size, options.image_size) != (height, width):
        raise ModelError(f"--image-size {options.image_size} but the model takes {height}x{width} images", path)
    spec = Preprocessing(height=height, width=width, resize=resize, scaling=scaling)
    classes = [str(c) for c in options.classes]
    _check_io(model, path, classes, spec)
    calibration = validation = test = None
    if options.calib_data:
        calibration, validation = _calibration_from_folder(options.calib_data, classes, options.seed)
    if options.test_data:
        test = _test_from_folder(options.test_data, classes)
    digest = sha256_file(path) if path.is_file() else sha256_file(path / "saved_model.pb")
    source = ModelSource(
        path=path, kind=kind, model=model, classes=classes, preprocessing=spec, reference_preprocessing=spec,
        source_output="probabilities", output_decided_by="", sha256=digest, calibration=calibration,
        validation=validation, test=test)
    if options.output != "auto":
        return _settle_output(source, options.output, "--output")
    output, reason = detect_output(model, source)
    return _settle_output(source, output, reason)


def _load_keras(path: Path):
    import keras

    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, zipfile/h5py errors, TypeError...
        raise ModelError(f"Keras cannot load this model ({_first_line(err)})", path) from err


def _load_saved_model(path: Path, image_size: int | None):
    """A SavedModel's serving signature wrapped as a Keras model (Keras 3 cannot load SavedModels directly)."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except Exception as err:
        raise ModelError(f"TensorFlow cannot load this SavedModel ({_first_line(err)})", path) from err
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ModelError("the SavedModel's serving signature must take one NHWC image tensor", path)
    shape = list(specs[0].shape)
    h = shape[1] if shape[1] is not None else image_size
    w = shape[2] if shape[2] is not None else image_size
    if h is None or w is None:
        raise ModelError("the SavedModel's input size is not fixed: pass --image-size", path)
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inputs = keras.Input((h, w, shape[3] or 3), name="image")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelError(f"the SavedModel has {len(outputs)} outputs; export needs one", path)
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def _input_hw(model, path: Path) -> tuple[int | None, int | None]:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(model.inputs) != 1 or len(shape) != 4:
        raise ModelError(f"expected one image input of rank 4 (N, H, W, 3), the model takes {shape}", path)
    if shape[3] != 3:
        raise ModelError(f"the model takes {shape[3]}-channel input; bundles are RGB NHWC (channels last)", path)
    return shape[1], shape[2]


def _check_io(model, path: Path, classes: list[str], spec: Preprocessing) -> None:
    """Class count against the output width; image size against the input shape."""
    if len(model.outputs) != 1:
        raise ModelError(f"the model has {len(model.outputs)} outputs; export needs one", path)
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2:
        raise ModelError(f"the model's output has shape {out_shape}; expected (batch, classes)", path)
    if out_shape[-1] != len(classes):
        raise ModelError(f"the model has {out_shape[-1]} outputs but {len(classes)} classes were given "
                         f"({', '.join(classes)})", path)
    h, w = _input_hw(model, path)
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        raise ModelError(f"the model takes {h}x{w} images but the preprocessing says "
                         f"{spec.height}x{spec.width}", path)


# ----------------------------------------------------------------------------------- probabilities vs logits


def detect_output(model, source: ModelSource) -> tuple[str, str]:
    """("probabilities" | "logits", why): the last layer's activation where Keras tells it, else the outputs.

    Probabilities are rows in [0, 1] summing to 1 on real images (or noise when none are at hand); logits are
    anything else. A softmax layer could be hiding inside a SavedModel, so the empirical test is the fallback.
    """
    import keras

    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax) or activation is keras.activations.softmax:
        return "probabilities", "last layer applies softmax"
    if activation is keras.activations.linear:
        return "logits", "last layer is linear"
    outputs = _probe_outputs(model, source)
    if _rows_are_probabilities(outputs):
        return "probabilities", "outputs are rows in [0, 1] that sum to 1"
    return "logits", "outputs are not rows of probabilities"


def _probe_outputs(model, source: ModelSource) -> np.ndarray:
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.runtime.preprocess import scale

    spec = source.reference_preprocessing
    samples: list[Sample] = []
    for group in (source.test, source.calibration):
        if group:
            samples = group.samples[:8]
            break
    pixels = load_pixels(samples, spec, show_progress=False).pixels if samples else np.zeros((0,))
    if len(pixels) == 0:
        pixels = np.random.default_rng(0).integers(0, 256, (4, spec.height, spec.width, 3), dtype=np.uint8)
    return np.asarray(model.predict(scale(pixels, spec), verbose=0), dtype=np.float64)


def _rows_are_probabilities(outputs: np.ndarray) -> bool:
    return bool(outputs.size and np.all(outputs >= -1e-6) and np.all(outputs <= 1 + 1e-6)
                and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def _settle_output(source: ModelSource, output: str, decided_by: str) -> ModelSource:
    """Check a stated output type against the model and append a softmax to logit models.

    Every exported file then yields probabilities by itself (a lone .onnx used by another tool too), and the
    int8 files quantize the softmax's input rather than saturating probabilities.
    """
    import keras

    if decided_by == "--output" and source.kind != "run":
        probs = _rows_are_probabilities(_probe_outputs(source.model, source))
        if output == "probabilities" and not probs:
            raise ModelError("--output probabilities, but the model's outputs are not rows of probabilities "
                             "(pass --output logits)", source.path)
        if output == "logits" and probs:
            source.warnings.append("--output logits, but the outputs look like probabilities: a softmax will be "
                                   "applied on top of them")
    source.source_output = output
    source.output_decided_by = decided_by
    if output == "logits":
        model = source.model
        probabilities = keras.layers.Softmax(name="probabilities")(model.outputs[0])
        source.model = keras.Model(model.inputs, probabilities, name=f"{model.name}_softmax")
    return source


# ------------------------------------------------------------------------------------------------- samples


def _calibration_from_folder(folder: Path, classes: list[str], seed: int,
                             keep_validation: SampleSet | None = None) -> tuple[SampleSet, SampleSet | None]:
    samples = folder_samples(folder, classes, TRAIN_DIR)
    require_images(samples, "calibration", folder)
    if keep_validation is not None:
        return SampleSet(samples, f"--calib-data {folder}"), keep_validation
    kept, held = stratified_split(samples, FOREIGN_VAL_FRACTION, seed)
    if not held or not kept:
        return SampleSet(samples, f"--calib-data {folder}"), None
    return (SampleSet(kept, f"--calib-data {folder} ({100 - FOREIGN_VAL_FRACTION * 100:.0f} %)"),
            SampleSet(held, f"--calib-data {folder} (held-out {FOREIGN_VAL_FRACTION * 100:.0f} %)"))


def _test_from_folder(folder: Path, classes: list[str]) -> SampleSet:
    samples = folder_samples(folder, classes, TEST_DIR)
    require_images(samples, "test", folder)
    return SampleSet(samples, f"--test-data {folder}")


def _check_choice(value: str, choices: dict, flag: str) -> str:
    if value not in choices:
        raise TumorEdgeError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0][:240] if lines else type(err).__name__
