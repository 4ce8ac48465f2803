"""The training run folder: what `train` writes and `evaluate`, `export`, `bench` and `demo` read.

`RunFolder(path)` names every file of a run; `RunConfig` is config.json, typed. Keys a newer tumor-edge adds are
kept in `RunConfig.extra` and written back unchanged, so an older reader never drops them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import ConfigError, ModelError


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    model = property(lambda self: self.path / "model.keras")  # best checkpoint, float32, no optimizer state
    config = property(lambda self: self.path / "config.json")  # RunConfig
    split = property(lambda self: self.path / "split.json")  # every file and its split
    history = property(lambda self: self.path / "history.csv")  # Keras CSVLogger, both phases
    metrics = property(lambda self: self.path / "metrics.json")  # test-split evaluation
    predictions = property(lambda self: self.path / "test_predictions.npz")  # probabilities, labels, files
    roc_png = property(lambda self: self.path / "roc.png")
    confusion_png = property(lambda self: self.path / "confusion_matrix.png")
    curves_png = property(lambda self: self.path / "training_curves.png")
    reliability_png = property(lambda self: self.path / "reliability.png")  # calibration, before/after (test)
    ood_params = property(lambda self: self.path / "ood.npz")  # OOD fit (tumor_edge.calibration.mahalanobis)
    FILE_NAMES: ClassVar[tuple[str, ...]]  # every file named above: `train --force` replaces these and nothing else

    def is_run(self) -> bool:
        return self.model.is_file() and self.config.is_file()

    def read_config(self) -> RunConfig:
        return RunConfig.read(self.config)

    def read_metrics(self) -> dict[str, Any]:
        try:
            return json.loads(self.metrics.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"unreadable run metrics ({err})", self.metrics) from err


RunFolder.FILE_NAMES = tuple(prop.fget(RunFolder(Path())).name for prop in vars(RunFolder).values()
                             if isinstance(prop, property))


@dataclass
class RunConfig:
    """config.json of a run: how the model was trained and what it expects."""

    classes: list[str]
    preprocessing: Preprocessing
    output: str = "probabilities"  # what model.keras outputs
    data_root: str | None = None
    data_fingerprint: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    device: str | None = None
    mixed_precision: Any = False
    fit_seconds: float | None = None
    created: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "preprocessing")}
        data["preprocessing"] = self.preprocessing.to_dict()
        data["image_size"] = self.preprocessing.height
        return {**self.extra, **data}

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: Path | None = None) -> RunConfig:
        try:
            if not isinstance(data, dict):
                raise ConfigError("the run config must be a JSON object")
            classes = data.get("classes")
            if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
                raise ConfigError("field 'classes' must be a non-empty list of names")
            spec = Preprocessing.from_dict(data.get("preprocessing"))
        except ConfigError as err:
            raise ModelError(f"invalid run config: {err.reason}", source) from err
        known = {f.name for f in fields(cls)} - {"extra", "preprocessing", "classes"}
        values = {k: data[k] for k in known if k in data}
        extra = {k: v for k, v in data.items() if k not in known | {"preprocessing", "classes", "image_size"}}
        return cls(classes=list(classes), preprocessing=spec, extra=extra, **values)

    @classmethod
    def read(cls, path: Path) -> RunConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"unreadable run config ({err})", path) from err
        return cls.from_dict(data, path)
