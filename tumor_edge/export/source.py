"""Loading what is being exported: a training run folder, or a Keras/SavedModel/ONNX classifier made elsewhere,
as the one `ModelSource` (export/model_source.py) everything downstream works from. A run folder says everything
itself (`contracts.run_folder`); for a foreign model the user says it and we check what can be checked
(export/foreign.py, export/outputs.py; a foreign ONNX file: export/source_onnx.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.contracts.preprocessing import RESIZE_NAMES, SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.data.dataset import read_split
from tumor_edge.errors import ConfigError, DatasetError, ModelError
from tumor_edge.export.foreign import KERAS_SUFFIXES, SAVED_MODEL_FILE, check_io, input_hw, load_model_file
from tumor_edge.export.foreign_onnx import ONNX_SUFFIXES
from tumor_edge.export.model_source import (
    FOREIGN_VAL_FRACTION,
    OUTPUT_TYPES,
    ModelSource,
    SourceOptions,
    calibration_from_folder,
    checked_choice,
    needs_option,
    require_foreign_options,
    test_from_folder,
)
from tumor_edge.export.outputs import detect_output, settle_output
from tumor_edge.export.samples import SampleSet
from tumor_edge.export.source_onnx import load_onnx_source, settle_onnx_trust


def load_source(path: str | Path, options: SourceOptions) -> ModelSource:
    """Load a run folder, a .keras/.h5 file or a SavedModel folder, with its samples; one-line errors."""
    path = Path(path)
    if options.output not in OUTPUT_TYPES:
        raise ConfigError(f"the model output must be one of {', '.join(OUTPUT_TYPES)}, not {options.output!r}")
    if not path.exists():
        raise ModelError("no such run folder or model file", path)
    run = RunFolder(path)
    if path.is_dir() and run.is_run():
        return _load_run(run, options).settle_trust()
    if path.is_dir() and (path / SAVED_MODEL_FILE).is_file():
        return _load_foreign(path, "savedmodel", options).settle_trust()
    if path.is_dir():
        raise ModelError(f"not a run folder (no {run.model.name} + {run.config.name}) nor a SavedModel "
                         f"(no {SAVED_MODEL_FILE})", path)
    if path.suffix.lower() in KERAS_SUFFIXES:
        return _load_foreign(path, "keras", options).settle_trust()
    if path.suffix.lower() in ONNX_SUFFIXES:
        return settle_onnx_trust(load_onnx_source(path, options))
    raise ModelError(f"unsupported model file; expected a run folder, {', '.join(KERAS_SUFFIXES + ONNX_SUFFIXES)} "
                     "or a SavedModel folder", path)


# ----------------------------------------------------------------------------------------------- run folders


def _load_run(run: RunFolder, options: SourceOptions) -> ModelSource:
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
    if options.preprocess and options.preprocess != trained_spec.scaling:
        bundle_spec = replace(bundle_spec, scaling=checked_choice(options.preprocess, SCALING_NAMES, "scaling"))
        warnings.append(f"the scaling '{options.preprocess}' overrides the run's training scaling "
                        f"'{trained_spec.scaling}'; parity will show whether the model agrees")
    if options.resize and options.resize != trained_spec.resize:
        bundle_spec = replace(bundle_spec, resize=checked_choice(options.resize, RESIZE_NAMES, "resize"))
        warnings.append(f"the resize '{options.resize}' overrides the run's training resize "
                        f"'{trained_spec.resize}'; parity will show whether the model agrees")
    calibration = validation = test = None
    if run.split.is_file():
        try:
            train = read_split(run.split, "train")[1]
            val = read_split(run.split, "val")[1]
            test_samples = read_split(run.split, "test")[1]
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


def _load_foreign(path: Path, kind: str, options: SourceOptions) -> ModelSource:
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
    calibration = validation = test = None
    if options.calib_data:
        calibration, validation = calibration_from_folder(options.calib_data, classes, options.seed)
    if options.test_data:
        test = test_from_folder(options.test_data, classes)
    digest = sha256_file(path) if path.is_file() else sha256_file(path / SAVED_MODEL_FILE)
    source = ModelSource(
        path=path, kind=kind, classes=classes, preprocessing=spec, reference_preprocessing=spec,
        source_output="probabilities", output_decided_by="", sha256=digest, calibration=calibration,
        validation=validation, test=test, seed=options.seed, _raw=raw)
    if options.output != "auto":
        return settle_output(source, options.output, "--output", stated=True)
    output, reason = detect_output(raw, source)
    return settle_output(source, output, reason, stated=False)


# The names export's other modules have always imported from here (a ModelSource is still what `load_source` gives).
__all__ = ["FOREIGN_VAL_FRACTION", "ModelSource", "SourceOptions", "calibration_from_folder", "checked_choice",
           "load_source", "needs_option", "require_foreign_options", "test_from_folder"]
