"""`tumor-edge train`: check data, split, fit in two phases, keep the best checkpoint, evaluate honestly."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import (
    DatasetIndex,
    Sample,
    discover,
    load_pixels,
    stratified_split,
    write_split,
)
from tumor_edge.errors import DatasetError
from tumor_edge.machine import package_versions
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime.preprocess import Preprocessing
from tumor_edge.train.augment import AugmentConfig


@dataclass
class TrainConfig:
    data: Path
    out: Path | None = None  # default runs/<timestamp>
    image_size: int = 299
    weights: str | None = "imagenet"
    epochs: int = 10  # phase 1: head only (pretrained) or the whole network (from scratch)
    fine_tune_epochs: int = 10  # phase 2: upper base layers at a lower learning rate (pretrained only)
    fine_tune_from: int = 249  # InceptionV3 layer index: 249 = the top two inception blocks
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    dropout: float = 0.3
    bn_momentum: float | None = None
    val_split: float = 0.15
    seed: int = 42
    monitor: str = "val_loss"  # or "val_auc"
    patience: int = 5
    dedup: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    strategy: str = "auto"  # auto | mirrored | default
    mixed_precision: str = "auto"  # auto (on GPU) | on | off
    deterministic: bool = False
    force: bool = False
    verbose: int = 1  # Keras progress bars

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["data"] = str(self.data)
        data["out"] = str(self.out) if self.out else None
        return data


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


def select_strategy(name: str):
    """MirroredStrategy over all visible GPUs when there are several (or asked); the default strategy else."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(), gpus
    return tf.distribute.get_strategy(), gpus


def drop_test_duplicates(index: DatasetIndex) -> tuple[list[Sample], int]:
    from tumor_edge.data.dedup import find_cross_split_duplicates, hash_images

    train_hashes, _ = hash_images(index.train, "hashing Training")
    test_hashes, _ = hash_images(index.test, "hashing Testing")
    dupes = {d.test for d in find_cross_split_duplicates(train_hashes, test_hashes)}
    return [s for s in index.test if s.path not in dupes], len(dupes)


def _compile(model, learning_rate: float, num_classes: int) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes)],
    )


def _callbacks(config: TrainConfig, out: Path, checkpoint):
    import keras

    mode = "max" if config.monitor.endswith("auc") or config.monitor.endswith("accuracy") else "min"
    return [
        checkpoint,
        keras.callbacks.EarlyStopping(config.monitor, mode=mode, patience=config.patience,
                                      restore_best_weights=False),
        keras.callbacks.ReduceLROnPlateau(config.monitor, mode=mode, factor=0.3,
                                          patience=max(1, config.patience // 2), min_lr=1e-7),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
    ]


def _fit_trust(model, val_px, test_samples, spec, run: RunFolder, batch_size: int) -> dict[str, Any]:
    """Temperature and OOD fit on the validation split, measured on the test split (tumor_edge.train.trust)."""
    from tumor_edge.train.trust import fit_trust_for_run

    test_px = load_pixels(test_samples, spec, "loading test images for calibration")
    return fit_trust_for_run(model, val_px.pixels, val_px.labels, test_px.pixels, test_px.labels,
                             run.reliability_png, run.ood_params, batch_size)


def run_training(config: TrainConfig) -> Path:
    """Train, checkpoint and evaluate; returns the run folder. Printing goes to stdout, as Keras' does."""
    import warnings

    import keras

    from tumor_edge.train.augment import build_augmenter
    from tumor_edge.train.evaluate import evaluate_samples, format_metrics
    from tumor_edge.train.model import build_classifier, resolve_weights, set_fine_tune
    from tumor_edge.train.pipeline import make_dataset
    from tumor_edge.train.plots import plot_history
    from tumor_edge.train.trust import describe_trust

    # Keras warns that fit's default shuffle=True is ignored for a tf.data input; ours shuffles itself.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    # A bad weights path or an offline ImageNet download fails before anything is written.
    if resolve_weights(config.weights) == "imagenet":
        from tumor_edge.train.model import ensure_imagenet_weights

        ensure_imagenet_weights()
    index = discover(config.data)
    out = prepare_run_dir(config.out, config.force)
    started = time.time()
    print(f"dataset {index.root}: {len(index.classes)} classes\n{index.counts_table()}")
    for problem in index.problems:
        print(f"warning: {problem}")
    if index.ignored:
        print(f"ignored {len(index.ignored)} non-image file(s)")
    if not index.test:
        raise DatasetError("Testing/ holds no images; the final evaluation needs some", index.root)
    test = index.test
    deduped = 0
    if config.dedup:
        test, deduped = drop_test_duplicates(index)
        print(f"--dedup: dropped {deduped} test image(s) that duplicate training images")

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    train, val = stratified_split(index.train, config.val_split, config.seed)
    write_split(out / "split.json", index.root, index.classes, {"train": train, "val": val, "test": test},
                config.seed, config.val_split)
    spec = Preprocessing(config.image_size, config.image_size, "bilinear", "none")

    train_px = load_pixels(train, spec, "loading training images")
    val_px = load_pixels(val, spec, "loading validation images")
    for failure in train_px.failures + val_px.failures:
        print(f"skipped unreadable file: {failure}")
    if len(train_px.labels) == 0:
        raise DatasetError("no readable training images", index.root)

    strategy, gpus = select_strategy(config.strategy)
    use_mp = config.mixed_precision == "on" or (config.mixed_precision == "auto" and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
    device = f"{len(gpus)} GPU(s), {type(strategy).__name__}" if gpus else "CPU"
    print(f"training on {device}; mixed precision {'on' if use_mp else 'off'}")

    n_classes = len(index.classes)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    augmenter = build_augmenter(config.augment, config.seed)
    train_ds = make_dataset(train_px.pixels, train_px.labels, n_classes, global_batch, True, augmenter, config.seed)
    val_ds = make_dataset(val_px.pixels, val_px.labels, n_classes, global_batch) if len(val_px.labels) else None
    monitor = config.monitor if val_ds is not None else config.monitor.removeprefix("val_")

    with strategy.scope():
        model = build_classifier(n_classes, config.image_size, config.weights, config.dropout, config.bn_momentum)
        pretrained = model.pretrained
        if pretrained:
            set_fine_tune(model, None)
        _compile(model, config.learning_rate, n_classes)
    mode = "max" if monitor.endswith(("auc", "accuracy")) else "min"
    checkpoint = keras.callbacks.ModelCheckpoint(str(out / "model.keras"), monitor=monitor, mode=mode,
                                                 save_best_only=True, verbose=0)
    config_eff = TrainConfig(**{**asdict(config), "monitor": monitor, "augment": config.augment})
    phases = []
    print(f"phase 1: {'head only, base frozen' if pretrained else 'whole network from scratch'}, "
          f"{config.epochs} epoch(s)")
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                        callbacks=_callbacks(config_eff, out, checkpoint), verbose=config.verbose)
    done = len(history.epoch)
    phases.append({"phase": "head" if pretrained else "full", "epochs": done})
    if pretrained and config.fine_tune_epochs > 0:
        with strategy.scope():
            trainable = set_fine_tune(model, config.fine_tune_from)
            _compile(model, config.fine_tune_learning_rate, n_classes)
        print(f"phase 2: fine-tuning {trainable} base layers from index {config.fine_tune_from} "
              f"(BatchNorm in inference mode), {config.fine_tune_epochs} epoch(s)")
        history = model.fit(train_ds, validation_data=val_ds, initial_epoch=done,
                            epochs=done + config.fine_tune_epochs,
                            callbacks=_callbacks(config_eff, out, checkpoint), verbose=config.verbose)
        phases.append({"phase": "fine-tune", "epochs": len(history.epoch)})
    fit_seconds = time.time() - started

    keras.mixed_precision.set_global_policy("float32")
    best = keras.models.load_model(out / "model.keras", compile=False)
    if use_mp:
        # Variables are float32 under mixed precision; only the compute dtype differs. Re-saving the best
        # checkpoint in a float32 graph keeps float16 casts out of the exported CPU/edge models.
        float32_model = build_classifier(n_classes, config.image_size, None, config.dropout)
        float32_model.set_weights(best.get_weights())
        best = float32_model
    # Re-saved without the optimizer state the checkpoint carried (Adam's moments triple the file).
    best.save(out / "model.keras")
    plot_history(out / "history.csv", out / "training_curves.png")
    metrics = evaluate_samples(best, test, index.classes, spec, out, config.batch_size, "test")
    metrics["deduplicated_test_images"] = deduped
    metrics["best_checkpoint_by"] = monitor
    run = RunFolder(out)
    trust = _fit_trust(best, val_px, test, spec, run, config.batch_size)
    metrics.update(trust)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    RunConfig(
        classes=index.classes,
        preprocessing=spec,
        output="probabilities",
        data_root=str(index.root.resolve()),
        data_fingerprint=data_fingerprint(index),
        counts=index.counts(),
        train_config=config.to_dict(),
        phases=phases,
        device=device,
        mixed_precision=bool(use_mp),
        fit_seconds=round(fit_seconds, 1),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=versions(),
        extra=trust,
    ).write(run.config)
    print(format_metrics(metrics))
    print(describe_trust(trust))
    print(f"run folder: {out}")
    return out
