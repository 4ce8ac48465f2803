"""What a training run is asked to do (`TrainConfig`, `AugmentConfig`), and the provenance stamped into its run
folder.

Augmentation runs on the fly as Keras layers in the training graph, not in the saved classifier, in float32
whatever the precision policy (resampling in float16 loses pixel levels)."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.data.dataset import DatasetIndex
from tumor_edge.machine import package_versions
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.train.backends import DEFAULT_BACKEND


@dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes as Keras' layers take them; 0 (or False) disables one transform."""

    rotation: float = 0.04  # fraction of a full turn: 0.04 ~ +-14 degrees
    shift: float = 0.08  # fraction of height/width
    flip: bool = True  # horizontal only: left/right hemispheres are symmetric enough; up/down is not anatomy
    zoom: float = 0.1
    contrast: float = 0.1
    enabled: bool = True


def build_augmenter(config: AugmentConfig, seed: int):
    """A Sequential of the enabled transforms, or None when nothing is enabled."""
    import keras

    if not config.enabled:
        return None
    filled = {"fill_mode": "constant", "dtype": "float32"}
    transforms = [  # (enabled, the layer given its seed); each keeps its seed offset whichever others are off
        (config.flip, lambda s: keras.layers.RandomFlip("horizontal", seed=s, dtype="float32")),
        (config.rotation > 0, lambda s: keras.layers.RandomRotation(config.rotation, seed=s, **filled)),
        (config.shift > 0, lambda s: keras.layers.RandomTranslation(config.shift, config.shift, seed=s, **filled)),
        (config.zoom > 0, lambda s: keras.layers.RandomZoom(config.zoom, seed=s, **filled)),
        (config.contrast > 0, lambda s: keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=s,
                                                                    dtype="float32")),
    ]
    layers = [make(seed + offset) for offset, (enabled, make) in enumerate(transforms) if enabled]
    return keras.Sequential(layers, name="augmentation") if layers else None


@dataclass
class TrainConfig:
    data: Path
    out: Path | None = None  # default runs/<timestamp>
    image_size: int = 299
    weights: str | None = "imagenet"
    epochs: int = 10  # phase 1: head only (pretrained) or the whole network (from scratch)
    fine_tune_epochs: int = 10  # phase 2: upper base layers at a lower learning rate (pretrained only)
    fine_tune_from: int = 249  # InceptionV3 layer index: 249 = the top two inception blocks
    batch_size: int = 32  # per replica; the global batch is this times the replicas
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    lr_schedule: str = "plateau"  # tumor_edge.train.backends.LR_SCHEDULES: within each phase
    dropout: float = 0.3
    bn_momentum: float | None = None
    val_split: float = 0.15
    seed: int = 42
    monitor: str = "val_loss"  # or "val_auc", "val_accuracy"
    patience: int = 5
    dedup: bool = False  # drop validation and test images that duplicate training images
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backend: str = DEFAULT_BACKEND  # the Keras 3 backend that trains: tumor_edge.train.backends.BACKENDS
    jit_compile: str = "auto"  # auto | on | off: Keras' compile(jit_compile=...) (XLA; torch.compile on torch)
    strategy: str = "auto"  # tumor_edge.train.distribute.STRATEGIES
    mixed_precision: str = "auto"  # tumor_edge.train.backends.PRECISIONS
    worker_hosts: tuple[str, ...] = ()  # host:port of every worker; with task_index, sets TF_CONFIG
    task_index: int | None = None
    cache_dir: Path | None = None  # where decoded pixels are cached during the run [system temp]
    deterministic: bool = False
    force: bool = False
    verbose: int = 1  # Keras progress bars
    show_progress: bool = True  # decoding and hashing progress

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as text, tuples as lists."""
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}


def prepare_run_dir(out: Path | None, force: bool) -> Path:
    """The run folder (`runs/<timestamp>` by default); with force, only a run's own files are replaced."""
    out = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    return prepare_out_dir(out, force, RunFolder.FILE_NAMES, "run")


def data_fingerprint(index: DatasetIndex) -> str:
    """sha256 over every file's relative path, label and content: which data a model saw, exactly."""
    digest = hashlib.sha256()
    for split, samples in (("Training", index.train), ("Testing", index.test)):
        for s in sorted(samples, key=lambda s: str(s.path)):
            digest.update(f"{split}/{s.path.relative_to(index.root)}:{s.label}:".encode())
            digest.update(hashlib.sha256(s.path.read_bytes()).digest())
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    return {**package_versions(), "python": platform.python_version(), "platform": platform.platform()}
