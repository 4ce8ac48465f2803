"""Loading what is being exported: a training run folder, or a Keras/SavedModel/ONNX classifier made elsewhere,
as the one `ModelSource` everything downstream works from.

A run folder says everything itself (`contracts.run_folder`). For a foreign model the user says what cannot be
read from it (class names, scaling) and what can be checked is checked: the class count against the output width,
the image size against the input shape, one NHWC RGB input, and whether it outputs probabilities or logits. A
logit model gets a softmax appended, so every exported file yields probabilities by itself and the int8 files
quantize the softmax's input rather than saturating probabilities. A foreign ONNX file loads no TensorFlow: it is
read by export/foreign_onnx.py, and the onnx-fp32 row rewrites its graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.contracts.preprocessing import SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import load_pixels, read_split
from tumor_edge.errors import DatasetError, ModelError, first_line
from tumor_edge.export.config import ExportConfig, needs_option
from tumor_edge.export.foreign_onnx import ONNX_SUFFIXES, OnnxFacts, OnnxModel, input_size, inspect_onnx
from tumor_edge.export.samples import SampleSet, calibration_from_folder, test_from_folder
from tumor_edge.export.trust_outputs import fit_foreign_trust, onnx_trust, trust_export
from tumor_edge.runtime import scale

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass
class ModelSource:
    """What is being exported, as everything downstream sees it. The model is loaded on first use, in whichever
    process needs it: the source pickles without it, so a converter's child process loads its own."""

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
        run = RunFolder(self.run_dir) if self.run_dir else None
        return trust_export(self.model, self.run_config.extra if self.run_config else self._foreign_trust(),
                            run.ood_params if run else None)

    def _foreign_trust(self) -> dict[str, Any]:
        """What train would have recorded, fitted once (where the source is loaded) on the held-back calibration
        images of a foreign model; plain data, so converter processes reuse it."""
        if self.foreign_fit is None:
            self.foreign_fit = fit_foreign_trust(self, self.seed)
        return self.foreign_fit

    def settle_trust(self) -> ModelSource:
        """Decide the trust outputs once, where the model is loaded; keep the plain facts for the parent."""
        if self.kind == "onnx":
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
        source = _load_foreign(path, "onnx", options)
    else:
        raise ModelError(f"unsupported model file; expected a run folder, "
                         f"{', '.join(KERAS_SUFFIXES + ONNX_SUFFIXES)} or a SavedModel folder", path)
    return source.settle_trust()


def _samples(options: ExportConfig, classes: list[str], calibration: SampleSet | None = None,
             validation: SampleSet | None = None, test: SampleSet | None = None) -> dict[str, SampleSet | None]:
    """The calibration, validation and test sets: from the folders the user gave, else these (a run's split; a
    validation split given here is kept when calibration images come from a folder)."""
    if options.calib_data:
        calibration, validation = calibration_from_folder(options.calib_data, classes, options.seed,
                                                           keep_validation=validation)
    if options.test_data:
        test = test_from_folder(options.test_data, classes)
    return {"calibration": calibration, "validation": validation, "test": test}


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
    for name, given in (("scaling", options.preprocess), ("resize", options.resize)):
        if given and given != getattr(trained_spec, name):
            bundle_spec = replace(bundle_spec, **{name: given})
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
    source = ModelSource(
        path=run.path, kind="run", classes=classes, preprocessing=bundle_spec, reference_preprocessing=trained_spec,
        source_output="probabilities", output_decided_by="run config", sha256=sha256_file(run.model),
        run_config=config, warnings=warnings, **_samples(options, classes, calibration, validation, test))
    check_io(source.raw_model, run.model, classes, trained_spec)
    stated = options.output != "auto"
    output = options.output if stated else config.output
    return settle_output(source, output, "--output" if stated else "run config", stated)


# ------------------------------------------------------------------------------------------- foreign models


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


def _load_foreign(path: Path, kind: str, options: ExportConfig) -> ModelSource:
    """A model made elsewhere ("keras", "savedmodel" or "onnx"): what the user says of it, checked against it."""
    if not options.classes:
        raise needs_option(ModelError("a model from outside a run needs its class names, in output order", path),
                           "classes")
    if not options.preprocess:
        raise needs_option(ModelError(f"a model from outside a run needs its input scaling "
                                      f"({', '.join(SCALING_NAMES)})", path), "preprocess")
    classes = [str(c) for c in options.classes]
    raw = facts = None
    if kind == "onnx":
        facts = inspect_onnx(path, len(classes), options.image_size, options.layout)
        height, width = input_size(facts.height, facts.width, options.image_size, path)
    else:
        raw = load_model_file(path, kind, options.image_size)
        height, width = input_size(*input_hw(raw, path), options.image_size, path)
    spec = Preprocessing(height=height, width=width, resize=options.resize or "bilinear", scaling=options.preprocess)
    if raw is not None:
        check_io(raw, path, classes, spec)
    source = ModelSource(
        path=path, kind=kind, classes=classes, preprocessing=spec, reference_preprocessing=spec,
        source_output="probabilities", output_decided_by="", onnx=facts, seed=options.seed, _raw=raw,
        sha256=sha256_file(path / SAVED_MODEL_FILE if kind == "savedmodel" else path), **_samples(options, classes))
    probe = probe_outputs(source.raw_model, source) if kind == "onnx" else None
    if probe is not None and (probe.ndim != 2 or probe.shape[1] != len(classes)):  # a dynamic width, on real outputs
        raise needs_option(ModelError(f"the model gives outputs of shape {probe.shape[1:]} per image but "
                                      f"{len(classes)} classes were given", path), "classes")
    if options.output != "auto":
        return settle_output(source, options.output, "--output", stated=True)
    return settle_output(source, *detect_output(source.raw_model, source, probe), stated=False)


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
