"""What is being exported, as everything downstream sees it: one `ModelSource` and the labelled image files it
calibrates, selects and tests on.

The model is loaded on first use, in whichever process needs it: the source pickles without it, so a converter's
child process loads its own. Calibration images come from the training split, the choice of calibration method
from the validation split, and parity from the test split: never the test split for anything but the final check.
Loading a source is export/source.py's job.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.contracts.preprocessing import SCALING_NAMES, Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import TEST_DIR, TRAIN_DIR, Sample, discover, stratified_split
from tumor_edge.errors import ConfigError, DatasetError, ModelError
from tumor_edge.export.config import ExportConfig, needs_option
from tumor_edge.export.foreign_onnx import OnnxFacts
from tumor_edge.runtime import is_scan_file

# Share of a foreign model's calibration images held out to choose the calibration method on.
FOREIGN_VAL_FRACTION = 0.2


@dataclass
class SampleSet:
    """Labelled image files plus where they came from, for the report."""

    samples: list[Sample]
    origin: str

    def __len__(self) -> int:
        return len(self.samples)


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
            from tumor_edge.export.source import load_model_file

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


# ------------------------------------------------------------------------------------------------- samples


def stratified_subset(samples: Sequence[Sample], count: int | None, seed: int) -> list[Sample]:
    """At most `count` samples with each class in its original proportion (at least one each); all if None.
    Deterministic for a seed, so the same export calibrates on the same images every time."""
    samples = list(samples)
    if count is None or count >= len(samples):
        return samples
    by_label: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_label.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    chosen: list[Sample] = []
    total = len(samples)
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        take = max(1, round(count * len(group) / total))
        chosen.extend(group[:take])
    rng.shuffle(chosen)
    return chosen[:count] if len(chosen) > count else chosen


def folder_samples(folder: Path, classes: Sequence[str], split_dir: str) -> list[Sample]:
    """A dataset root (ROOT/<split_dir>/<class>/*) or a folder of class sub-folders, as labelled samples. A folder
    whose sub-folders are not class names is refused, so a typo cannot silently test nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("folder not found", folder)
    if (folder / split_dir).is_dir():
        if split_dir == TRAIN_DIR:
            index = discover(folder, require_test=False)
            if list(index.classes) != list(classes):
                raise DatasetError(f"classes {', '.join(index.classes)} differ from the model's "
                                   f"({', '.join(classes)})", folder)
            return list(index.train)
        folder = folder / split_dir
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [d for d in subdirs if d not in classes]
    if unknown:
        raise DatasetError(f"sub-folders {', '.join(unknown)} are not classes of this model "
                           f"({', '.join(classes)})", folder)
    samples = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if class_dir.is_dir():
            samples.extend(Sample(p, label) for p in sorted(class_dir.rglob("*")) if p.is_file() and is_scan_file(p))
    return samples


def calibration_from_folder(folder: Path, classes: list[str], seed: int,
                             keep_validation: SampleSet | None = None) -> tuple[SampleSet, SampleSet | None]:
    samples = folder_samples(folder, classes, TRAIN_DIR)
    if not samples:
        raise DatasetError("no calibration images found", folder)
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
    if not samples:
        raise DatasetError("no test images found", folder)
    return SampleSet(samples, f"test images {folder}")


def checked_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ConfigError(f"the {what} must be one of {', '.join(choices)}, not {value!r}")
    return value
