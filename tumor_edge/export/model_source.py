"""What is being exported, as everything downstream sees it: one `ModelSource` and the options that made it.

Everything downstream (converters, quantization, parity) works from one `ModelSource`: the model (loaded on first
use, in whichever process needs it: the source pickles without it, so a converter's child process loads its own),
the class names in output order, the preprocessing the bundle will declare, the preprocessing the Keras reference
is evaluated with, and the labelled images to calibrate, select and test on. Loading one is export/source.py's
job (run folders, Keras and SavedModel files) and export/source_onnx.py's (a foreign ONNX file); both build on the
helpers here, so neither imports the other's module for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.contracts.preprocessing import SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import TEST_DIR, TRAIN_DIR, stratified_split
from tumor_edge.errors import ConfigError, ModelError
from tumor_edge.export.foreign import load_model_file
from tumor_edge.export.foreign_onnx import OnnxFacts
from tumor_edge.export.outputs import with_softmax
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
        """Decide the trust outputs once, where the model is loaded; keep the plain facts for the parent. (A
        foreign ONNX source is settled by export/source_onnx.py's `settle_onnx_trust` instead.)"""
        if self.kind == "onnx":
            raise ValueError("a foreign ONNX source is settled by source_onnx.settle_onnx_trust")
        found = self._trust_export()
        self._converted, found.model = found.model, None
        self.trust = found
        self.warnings.extend(note for note in found.notes if note != "heatmaps not requested")
        return self

    @property
    def softmax_appended(self) -> bool:
        return self.source_output == "logits"


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


__all__ = ["FOREIGN_VAL_FRACTION", "OUTPUT_TYPES", "ModelSource", "SourceOptions", "calibration_from_folder",
           "checked_choice", "needs_option", "require_foreign_options", "test_from_folder"]
