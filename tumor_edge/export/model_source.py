"""What is being exported, as everything downstream sees it: one `ModelSource`.

The model is loaded on first use, in whichever process needs it: the source pickles without it, so a converter's
child process loads its own. Finding and checking a source is export/source.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.contracts.preprocessing import SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.errors import ConfigError, ModelError, first_line
from tumor_edge.export.config import ExportConfig, needs_option
from tumor_edge.export.foreign_onnx import OnnxFacts
from tumor_edge.export.samples import SampleSet


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
    foreign_fit: dict[str, Any] | None = None  # a foreign model's calibration and OOD fit (export/trust_outputs.py)
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
        """A model that yields probabilities (a softmax appended to a logit model)."""
        if self._model is None:
            self._model = self.raw_model
            if self.softmax_appended and self.kind == "onnx":
                self._model = self._model.with_softmax()
            elif self.softmax_appended:
                import keras

                probabilities = keras.layers.Softmax(name="probabilities")(self._model.outputs[0])
                self._model = keras.Model(self._model.inputs, probabilities, name=f"{self._model.name}_softmax")
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
            from tumor_edge.export.trust_outputs import fit_foreign_trust

            self.foreign_fit = fit_foreign_trust(self, self.seed)
        return self.foreign_fit

    def settle_trust(self) -> ModelSource:
        """Decide the trust outputs once, where the model is loaded; keep the plain facts for the parent."""
        if self.kind == "onnx":
            from tumor_edge.export.trust_outputs import onnx_trust

            found = onnx_trust(self._foreign_trust())
        else:
            found = self._trust_export()
            self._converted, found.model = found.model, None
        self.trust = found
        self.warnings.extend(found.notes)
        return self

    @property
    def softmax_appended(self) -> bool:
        return self.source_output == "logits"


def require_foreign_options(path: Path, options: ExportConfig) -> None:
    if not options.classes:
        raise needs_option(ModelError("a model from outside a run needs its class names, in output order", path),
                           "classes")
    if not options.preprocess:
        raise needs_option(ModelError(f"a model from outside a run needs its input scaling "
                                      f"({', '.join(SCALING_NAMES)})", path), "preprocess")


def checked_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ConfigError(f"the {what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def load_model_file(path: Path, kind: str, image_size: int | None):
    """The model as its maker saved it: kind "keras" (a file) or "savedmodel" (a folder)."""
    import keras

    if kind == "savedmodel":
        return _load_saved_model(path, image_size)
    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, zipfile/h5py errors, TypeError...
        raise ModelError(f"Keras cannot load this model ({first_line(err, 240)})", path) from err


def _load_saved_model(path: Path, image_size: int | None):
    """A SavedModel's serving signature wrapped as a Keras model (Keras 3 cannot load SavedModels directly)."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except Exception as err:
        raise ModelError(f"TensorFlow cannot load this SavedModel ({first_line(err, 240)})", path) from err
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ModelError("the SavedModel's serving signature must take one NHWC image tensor", path)
    shape = list(specs[0].shape)
    h = shape[1] if shape[1] is not None else image_size
    w = shape[2] if shape[2] is not None else image_size
    if h is None or w is None:
        raise ModelError("the SavedModel's input size is not fixed: give the image size", path)
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inputs = keras.Input((h, w, shape[3] or 3), name="image")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelError(f"the SavedModel has {len(outputs)} outputs; export needs one", path)
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)
