"""Loading what is being exported: a training run folder, or a Keras/SavedModel/ONNX classifier made elsewhere,
as the one `ModelSource` (export/model_source.py) everything downstream works from.

A run folder says everything itself (`contracts.run_folder`). For a foreign model the user says what cannot be
read from it (class names, scaling) and what can be checked is checked: the class count against the output width,
the image size against the input shape, one NHWC RGB input, and whether it outputs probabilities or logits. A
logit model gets a softmax appended, so every exported file yields probabilities by itself and the int8 files
quantize the softmax's input rather than saturating probabilities. A foreign ONNX file loads no TensorFlow: it is
read by export/foreign_onnx.py, and the onnx-fp32 row rewrites its graph.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.contracts.preprocessing import RESIZE_NAMES, SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.data.dataset import read_split
from tumor_edge.errors import DatasetError, ModelError
from tumor_edge.export.config import ExportConfig, needs_option
from tumor_edge.export.foreign_onnx import ONNX_SUFFIXES
from tumor_edge.export.model_source import ModelSource, checked_choice, load_model_file, require_foreign_options
from tumor_edge.export.samples import SampleSet, calibration_from_folder, test_from_folder

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAVED_MODEL_FILE = "saved_model.pb"


def load_source(options: ExportConfig) -> ModelSource:
    """Load `options.source` (a run folder, a .keras/.h5/.onnx file or a SavedModel folder) with its samples, as
    the options say; one-line errors."""
    path = options.source
    if not path.exists():
        raise ModelError("no such run folder or model file", path)
    run = RunFolder(path)
    if path.is_dir() and run.is_run():
        source = _load_run(run, options)
    elif path.is_dir() and (path / SAVED_MODEL_FILE).is_file():
        source = _load_foreign(path, "savedmodel", options)
    elif path.is_dir():
        raise ModelError(f"not a run folder (no {run.model.name} + {run.config.name}) nor a SavedModel "
                         f"(no {SAVED_MODEL_FILE})", path)
    elif path.suffix.lower() in KERAS_SUFFIXES:
        source = _load_foreign(path, "keras", options)
    elif path.suffix.lower() in ONNX_SUFFIXES:
        source = load_onnx_source(path, options)
    else:
        raise ModelError(f"unsupported model file; expected a run folder, "
                         f"{', '.join(KERAS_SUFFIXES + ONNX_SUFFIXES)} or a SavedModel folder", path)
    return source.settle_trust()


# ----------------------------------------------------------------------------------------------- run folders


def _load_run(run: RunFolder, options: ExportConfig) -> ModelSource:
    config = run.read_config()
    classes, trained_spec = list(config.classes), config.preprocessing
    if options.classes and list(options.classes) != classes:
        raise needs_option(ModelError(f"the classes given ({','.join(options.classes)}) differ from the run's "
                                      f"({','.join(classes)})", run.config), "classes")
    if options.image_size and options.image_size != trained_spec.height:
        raise needs_option(ModelError(f"the image size given ({options.image_size}) differs from the run's "
                                      f"{trained_spec.height}", run.config), "image_size")
    warnings: list[str] = []
    bundle_spec = trained_spec
    # An explicit scaling/resize overrides what the bundle declares; the Keras reference keeps the training
    # pipeline's, so parity shows at once whether the override was a mistake.
    for name, given, names in (("scaling", options.preprocess, SCALING_NAMES),
                               ("resize", options.resize, RESIZE_NAMES)):
        if given and given != getattr(trained_spec, name):
            bundle_spec = replace(bundle_spec, **{name: checked_choice(given, names, name)})
            warnings.append(f"the {name} '{given}' overrides the run's training {name} "
                            f"'{getattr(trained_spec, name)}'; parity will show whether the model agrees")
    calibration = validation = test = None
    if run.split.is_file():
        try:
            train, val, test_samples = (read_split(run.split, split)[1] for split in ("train", "val", "test"))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"unreadable split file ({err})", run.split) from err
        calibration = SampleSet(train, f"training split of {run.split}")
        validation = SampleSet(val, f"validation split of {run.split}") if val else None
        test = SampleSet(test_samples, f"test split of {run.split}")
    if options.calib_data:
        calibration, validation = calibration_from_folder(options.calib_data, classes, options.seed,
                                                           keep_validation=validation)
    if options.test_data:
        test = test_from_folder(options.test_data, classes)
    source = ModelSource(
        path=run.path, kind="run", classes=classes, preprocessing=bundle_spec, reference_preprocessing=trained_spec,
        source_output="probabilities", output_decided_by="run config", sha256=sha256_file(run.model),
        run_config=config, calibration=calibration, validation=validation, test=test, warnings=warnings)
    check_io(source.raw_model, run.model, classes, trained_spec)
    stated = options.output != "auto"
    output = options.output if stated else config.output
    return settle_output(source, output, "--output" if stated else "run config", stated)


# ------------------------------------------------------------------------------------------- foreign models


def _foreign_samples(options: ExportConfig, classes: list[str]) -> dict[str, SampleSet | None]:
    """A foreign model's calibration, validation and test sets, from the folders the user gave."""
    found: dict[str, SampleSet | None] = dict.fromkeys(("calibration", "validation", "test"))
    if options.calib_data:
        found["calibration"], found["validation"] = calibration_from_folder(options.calib_data, classes, options.seed)
    if options.test_data:
        found["test"] = test_from_folder(options.test_data, classes)
    return found


def _load_foreign(path: Path, kind: str, options: ExportConfig) -> ModelSource:
    require_foreign_options(path, options)
    scaling = checked_choice(options.preprocess, SCALING_NAMES, "scaling")
    resize = checked_choice(options.resize or "bilinear", RESIZE_NAMES, "resize")
    raw = load_model_file(path, kind, options.image_size)
    height, width = input_hw(raw, path)
    if height is None or width is None:
        if not options.image_size:
            raise needs_option(ModelError("the model's input size is not fixed: give the image size", path),
                               "image_size")
        height = width = options.image_size
    elif options.image_size and (options.image_size, options.image_size) != (height, width):
        raise needs_option(ModelError(f"the image size given is {options.image_size} but the model takes "
                                      f"{height}x{width} images", path), "image_size")
    spec = Preprocessing(height=height, width=width, resize=resize, scaling=scaling)
    classes = [str(c) for c in options.classes]
    check_io(raw, path, classes, spec)
    digest = sha256_file(path) if path.is_file() else sha256_file(path / SAVED_MODEL_FILE)
    source = ModelSource(
        path=path, kind=kind, classes=classes, preprocessing=spec, reference_preprocessing=spec,
        source_output="probabilities", output_decided_by="", sha256=digest, seed=options.seed, _raw=raw,
        **_foreign_samples(options, classes))
    return _settle_foreign_output(source, options)


def load_onnx_source(path: Path, options: ExportConfig) -> ModelSource:
    from tumor_edge.export.foreign_onnx import inspect_onnx

    require_foreign_options(path, options)
    classes = [str(c) for c in options.classes]
    facts = inspect_onnx(path, len(classes), options.image_size, options.layout)
    spec = Preprocessing(height=facts.height or options.image_size, width=facts.width or options.image_size,
                         resize=checked_choice(options.resize or "bilinear", RESIZE_NAMES, "resize"),
                         scaling=checked_choice(options.preprocess, SCALING_NAMES, "scaling"))
    source = ModelSource(
        path=path, kind="onnx", classes=classes, preprocessing=spec, reference_preprocessing=spec,
        source_output="probabilities", output_decided_by="", sha256=sha256_file(path), onnx=facts,
        seed=options.seed, **_foreign_samples(options, classes))
    probe = probe_outputs(source.raw_model, source)
    if probe.ndim != 2 or probe.shape[1] != len(classes):  # a dynamic output width is checked on real outputs
        raise needs_option(ModelError(f"the model gives outputs of shape {probe.shape[1:]} per image but "
                                      f"{len(classes)} classes were given", path), "classes")
    return _settle_foreign_output(source, options, probe)


def input_hw(model, path: Path) -> tuple[int | None, int | None]:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(model.inputs) != 1 or len(shape) != 4:
        raise ModelError(f"expected one image input of rank 4 (N, H, W, 3), the model takes {shape}", path)
    if shape[3] != 3:
        raise ModelError(f"the model takes {shape[3]}-channel input; bundles are RGB NHWC (channels last)", path)
    return shape[1], shape[2]


def check_io(model, path: Path, classes: list[str], spec: Preprocessing) -> None:
    """Class count against the output width; image size against the input shape."""
    if len(model.outputs) != 1:
        raise ModelError(f"the model has {len(model.outputs)} outputs; export needs one", path)
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2:
        raise ModelError(f"the model's output has shape {out_shape}; expected (batch, classes)", path)
    if out_shape[-1] != len(classes):
        raise ModelError(f"the model has {out_shape[-1]} outputs but {len(classes)} classes were given "
                         f"({', '.join(classes)})", path)
    h, w = input_hw(model, path)
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        raise ModelError(f"the model takes {h}x{w} images but the preprocessing says "
                         f"{spec.height}x{spec.width}", path)


# ------------------------------------------------------------------------------------ probabilities or logits


def _settle_foreign_output(source: ModelSource, options: ExportConfig, probe: np.ndarray | None = None
                           ) -> ModelSource:
    if options.output != "auto":
        return settle_output(source, options.output, "--output", stated=True)
    return settle_output(source, *detect_output(source.raw_model, source, probe), stated=False)


def detect_output(model, source: ModelSource, probe: np.ndarray | None = None) -> tuple[str, str]:
    """("probabilities" | "logits", why): the last layer's activation where Keras tells it, else the outputs
    (`probe`, or the model's outputs on a few images). A softmax could be hiding inside a SavedModel, so the
    empirical test is the fallback: rows in [0, 1] summing to 1 are probabilities, anything else logits."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if last is not None:
        import keras

        activation = getattr(last, "activation", None)
        if isinstance(last, keras.layers.Softmax) or activation is keras.activations.softmax:
            return "probabilities", "last layer applies softmax"
        if activation is keras.activations.linear:
            return "logits", "last layer is linear"
    if rows_are_probabilities(probe_outputs(model, source) if probe is None else probe):
        return "probabilities", "outputs are rows in [0, 1] that sum to 1"
    return "logits", "outputs are not rows of probabilities"


def probe_outputs(model, source: ModelSource) -> np.ndarray:
    """The model's outputs on a few of the source's images (random pixels when it has none)."""
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.runtime import scale

    spec = source.reference_preprocessing
    group = source.test or source.calibration
    pixels = load_pixels(group.samples[:8], spec, show_progress=False).pixels if group else np.zeros((0,))
    if len(pixels) == 0:
        pixels = np.random.default_rng(0).integers(0, 256, (4, spec.height, spec.width, 3), dtype=np.uint8)
    return np.asarray(model.predict(scale(pixels, spec), verbose=0), dtype=np.float64)


def rows_are_probabilities(outputs: np.ndarray) -> bool:
    return bool(outputs.size and np.all(outputs >= -1e-6) and np.all(outputs <= 1 + 1e-6)
                and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def settle_output(source: ModelSource, output: str, decided_by: str, stated: bool) -> ModelSource:
    """Record what the model outputs; a type the user stated is checked against the model's outputs."""
    if stated and source.kind != "run":
        probs = rows_are_probabilities(probe_outputs(source.raw_model, source))
        if output == "probabilities" and not probs:
            raise ModelError("the model was said to output probabilities, but its outputs are not rows of "
                             "probabilities (say logits)", source.path)
        if output == "logits" and probs:
            source.warnings.append("the model was said to output logits, but its outputs look like "
                                   "probabilities: a softmax will be applied on top of them")
    source.source_output = output
    source.output_decided_by = decided_by
    return source
