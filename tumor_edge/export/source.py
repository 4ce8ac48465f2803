"""What is being exported: a training run folder, or a Keras/SavedModel/ONNX classifier made elsewhere.

Everything downstream (converters, quantization, parity) works from one `ModelSource`: the model (loaded on first
use, in whichever process needs it: the source pickles without it, so a converter's child process loads its own),
the class names in output order, the preprocessing the bundle will declare, the preprocessing the Keras reference
is evaluated with, and the labelled images to calibrate, select and test on. A run folder says all of this
itself (`contracts.run_folder`); for a foreign model the user says it and we check what can be checked
(export/foreign.py, export/foreign_onnx.py, export/outputs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.contracts.preprocessing import RESIZE_NAMES, SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import TEST_DIR, TRAIN_DIR, read_split, stratified_split
from tumor_edge.errors import ConfigError, DatasetError, ModelError
from tumor_edge.export.foreign import KERAS_SUFFIXES, SAVED_MODEL_FILE, check_io, input_hw, load_model_file
from tumor_edge.export.foreign_onnx import ONNX_SUFFIXES, OnnxFacts
from tumor_edge.export.outputs import detect_output, settle_output, with_softmax
from tumor_edge.export.samples import SampleSet, folder_samples, require_images

OUTPUT_TYPES = ("auto", "probabilities", "logits")
# Share of a foreign model's calibration images held out to choose the calibration method on.
FOREIGN_VAL_FRACTION = 0.2


def needs_option(error: Exception, option: str) -> Exception:
    """Tag a library error with the export option that fixes it; the CLI names its flag."""
    error.option = option
    return error


@dataclass
class SourceOptions:
    """What the user tells export about the model (all optional for a run folder)."""

    classes: list[str] | None = None  # in output order
    image_size: int | None = None
    preprocess: str | None = None  # a scaling name of contracts.preprocessing
    resize: str | None = None  # a resize method of contracts.preprocessing
    output: str = "auto"  # "auto" | "probabilities" | "logits"
    layout: str = "auto"  # a foreign ONNX model's input: "auto" | "nchw" | "nhwc"
    calib_data: Path | None = None
    test_data: Path | None = None
    seed: int = 0


@dataclass
class ModelSource:
    path: Path
    kind: str  # "run" | "keras" | "savedmodel" | "onnx"
    classes: list[str]
    preprocessing: Preprocessing  # what the bundle declares and the runtime applies
    reference_preprocessing: Preprocessing  # what the Keras reference is evaluated with (the training pipeline)
    source_output: str  # what the original model outputs: "probabilities" | "logits"
    output_decided_by: str
    sha256: str
    run_config: RunConfig | None = None
    calibration: SampleSet | None = None  # training images
    validation: SampleSet | None = None  # held-out training images (choice of calibration method)
    test: SampleSet | None = None  # parity
    warnings: list[str] = field(default_factory=list)
    trust: Any = None  # export.trust_outputs.TrustExport without its model: outputs, calibration, OOD, notes
    onnx: OnnxFacts | None = None  # a foreign ONNX file: its layout, batch, opset (export/foreign_onnx.py)
    foreign_fit: dict[str, Any] | None = None  # a foreign model's calibration and OOD fit (export/foreign_trust.py)
    seed: int = 0
    _raw: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _converted: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_raw": None, "_model": None, "_converted": None}  # a child loads its own

    @property
    def model_file(self) -> Path:
        return RunFolder(self.path).model if self.kind == "run" else self.path

    @property
    def run_dir(self) -> Path | None:
        return self.path if self.kind == "run" else None

    @property
    def raw_model(self):
        """The model as saved."""
        if self._raw is None and self.kind == "onnx":
            from tumor_edge.export.foreign_onnx import OnnxModel

            self._raw = OnnxModel(self.path, self.onnx)
        if self._raw is None:
            self._raw = load_model_file(self.model_file, "keras" if self.kind == "run" else self.kind,
                                        self.preprocessing.height)
        return self._raw

    @property
    def model(self):
        """A Keras model that yields probabilities (a softmax appended to a logit model)."""
        if self._model is None and self.kind == "onnx":
            self._model = self.raw_model.with_softmax() if self.softmax_appended else self.raw_model
        if self._model is None:
            self._model = with_softmax(self.raw_model) if self.softmax_appended else self.raw_model
        return self._model

    @property
    def converted_model(self):
        """What the converters convert: `model`, plus the heatmap and OOD outputs its head and run allow
        (export/trust_outputs.py); `model` itself stays the single-output Keras reference."""
        if self._converted is None:
            self._converted = self._trust_export().model if self.trust and self.trust.extra_outputs else self.model
        return self._converted

    def _trust_export(self):
        from tumor_edge.export.trust_outputs import trust_export

        run = RunFolder(self.run_dir) if self.run_dir else None
        return trust_export(self.model, self.run_config.extra if self.run_config else self._foreign_trust(),
                            run.ood_params if run else None)

    def _foreign_trust(self) -> dict[str, Any]:
        """What train would have recorded, fitted once (where the source is loaded) on the held-back calibration
        images of a foreign model; plain data, so converter processes reuse it."""
        if self.foreign_fit is None:
            from tumor_edge.export.foreign_trust import fit_foreign_trust

            self.foreign_fit = fit_foreign_trust(self, self.seed)
        return self.foreign_fit

    def settle_trust(self) -> ModelSource:
        """Decide the trust outputs once, where the model is loaded; keep the plain facts for the parent."""
        if self.kind == "onnx":
            from tumor_edge.export.source_onnx import settle_onnx_trust

            return settle_onnx_trust(self)
        found = self._trust_export()
        self._converted, found.model = found.model, None
        self.trust = found
        self.warnings.extend(note for note in found.notes if note != "heatmaps not requested")
        return self

    @property
    def softmax_appended(self) -> bool:
        return self.source_output == "logits"


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
        from tumor_edge.export.source_onnx import load_onnx_source

        return load_onnx_source(path, options).settle_trust()
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


def require_foreign_options(path: Path, options: SourceOptions) -> None:
    if not options.classes:
        raise needs_option(ModelError("a model from outside a run needs its class names, in output order", path),
                           "classes")
    if not options.preprocess:
        raise needs_option(ModelError(f"a model from outside a run needs its input scaling "
                                      f"({', '.join(SCALING_NAMES)})", path), "preprocess")


# ------------------------------------------------------------------------------------------------- samples


def calibration_from_folder(folder: Path, classes: list[str], seed: int,
                             keep_validation: SampleSet | None = None) -> tuple[SampleSet, SampleSet | None]:
    samples = folder_samples(folder, classes, TRAIN_DIR)
    require_images(samples, "calibration", folder)
    origin = f"calibration images {folder}"
    if keep_validation is not None:
        return SampleSet(samples, origin), keep_validation
    kept, held = stratified_split(samples, FOREIGN_VAL_FRACTION, seed)
    if not held or not kept:
        return SampleSet(samples, origin), None
    return (SampleSet(kept, f"{origin} ({100 - FOREIGN_VAL_FRACTION * 100:.0f} %)"),
            SampleSet(held, f"{origin} (held-out {FOREIGN_VAL_FRACTION * 100:.0f} %)"))


def test_from_folder(folder: Path, classes: list[str]) -> SampleSet:
    samples = folder_samples(folder, classes, TEST_DIR)
    require_images(samples, "test", folder)
    return SampleSet(samples, f"test images {folder}")


def checked_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ConfigError(f"the {what} must be one of {', '.join(choices)}, not {value!r}")
    return value


__all__ = ["FOREIGN_VAL_FRACTION", "ModelSource", "SourceOptions", "calibration_from_folder", "checked_choice",
           "load_source", "needs_option", "require_foreign_options", "test_from_folder"]
