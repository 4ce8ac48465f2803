"""`tumor-edge train`: check data, split, fit in two phases, keep the best checkpoint, evaluate honestly.

The fitting schedule: phase 1 (head only, or everything from scratch), then phase 2 (fine-tune the top of a
pretrained base) starting from phase 1's best weights; the best epoch of either phase is what the run keeps.
On TensorFlow the batches come from tf.data pipelines over the pixel cache: uint8 (a quarter of float32's bytes)
until the model's graph casts them, and under a strategy each worker reads its own shard by index.

Augmentation runs on the fly as Keras layers in the training graph, not in the saved classifier, in float32
whatever the precision policy (resampling in float16 loses pixel levels).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import DatasetIndex, discover, load_pixels, stratified_split, write_split
from tumor_edge.errors import DatasetError
from tumor_edge.machine import package_versions
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime import Preprocessing
from tumor_edge.train.backends import DEFAULT_BACKEND, JIT_COMPILE, applied_updates, learning_rate_for


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


def run_training(config: TrainConfig) -> Path | None:
    """Train, checkpoint and evaluate; returns the run folder (None on a worker that is not the chief). Keras is
    imported here, after the backend is chosen; when Keras already runs another backend, a child process trains."""
    import warnings

    from tumor_edge.train.backends import configure_jax, select_backend

    if not select_backend(config.backend):
        from tumor_edge.train.backends import current_backend
        from tumor_edge.worker import run_elsewhere

        print(f"training on the {config.backend} backend in a child process (Keras runs {current_backend()} here)",
              flush=True)
        return run_elsewhere(run_training, config, name=f"{config.backend} training",
                             env={"KERAS_BACKEND": config.backend})
    jax_cache = configure_jax(config.deterministic) if config.backend == "jax" else None

    import keras

    from tumor_edge.data.dataset import build_pixel_cache
    from tumor_edge.data.dedup import find_split_leaks, without
    from tumor_edge.train.backends import backend_version, check_lr_schedule, choose_precision, configure_deterministic
    from tumor_edge.train.distribute import choose_strategy, cluster_from_flags
    from tumor_edge.train.model import resolve_weights

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    check_lr_schedule(config.lr_schedule)
    # A bad weights path or an offline ImageNet download fails before anything is written.
    if resolve_weights(config.weights) == "imagenet":
        from tumor_edge.train.model import ensure_imagenet_weights

        ensure_imagenet_weights()
    if config.worker_hosts:
        os.environ["TF_CONFIG"] = json.dumps(cluster_from_flags(config.worker_hosts, config.task_index))
    index = discover(config.data)
    if config.deterministic and config.backend == "torch":
        configure_deterministic("torch")  # before any kernel runs
    dist = choose_strategy(config.strategy, config.backend)  # before TensorFlow runs anything (multi-worker needs that)
    out = prepare_run_dir(config.out, config.force) if dist.chief else None
    run = RunFolder(out) if out is not None else None
    started = time.time()
    print(f"dataset {index.root}: {len(index.classes)} classes\n{index.counts_table()}")
    for problem in index.problems:
        print(f"warning: {problem}")
    if index.ignored:
        print(f"ignored {len(index.ignored)} non-image file(s)")
    if not index.test:
        raise DatasetError("Testing/ holds no images; the final evaluation needs some", index.root)

    keras.utils.set_random_seed(config.seed)
    if config.deterministic and config.backend == "tensorflow":
        configure_deterministic("tensorflow")
    train, val = stratified_split(index.train, config.val_split, config.seed)
    leaks = find_split_leaks(train, val, index.test, config.show_progress)
    test = index.test
    if config.dedup:
        val, test = without(val, leaks.val), without(test, leaks.test)
    for line in leaks.lines(dropped=config.dedup):
        print(line)
    if run is not None:
        write_split(run.split, index.root, index.classes, {"train": train, "val": val, "test": test},
                    config.seed, config.val_split)
    spec = Preprocessing(config.image_size, config.image_size, "bilinear", "none")
    precision = choose_precision(config.mixed_precision, dist.gpus)
    keras.mixed_precision.set_global_policy(precision.policy)
    backend = {"name": config.backend, "version": backend_version(config.backend), "keras": keras.__version__,
               "jit_compile": config.jit_compile, "compilation_cache": str(jax_cache) if jax_cache else None}
    print(f"Keras {keras.__version__} on {config.backend} {backend['version'] or ''}".rstrip()
          + f"; training on {dist.describe()}; precision policy {precision.policy} ({precision.reason})")

    with tempfile.TemporaryDirectory(prefix="tumor-edge-pixels-", dir=config.cache_dir) as tmp:
        train_cache = build_pixel_cache(train, spec, Path(tmp) / "train.u8", "decoding training images",
                                        config.show_progress)
        val_cache = build_pixel_cache(val, spec, Path(tmp) / "val.u8", "decoding validation images",
                                      config.show_progress)
        for failure in train_cache.failures + val_cache.failures:
            print(f"skipped unreadable file: {failure}")
        if train_cache.count == 0:
            raise DatasetError("no readable training images", index.root)
        fitted = fit_phases(config, dist, train_cache, val_cache, len(index.classes),
                            run.model if run else None, run.history if run else None)
    fit_seconds = time.time() - started
    print(f"fit throughput (json): {json.dumps(fitted.throughput)}")  # read by benchmarks/training_gpu.py
    path = _finish(config, run, index, val, test, spec, fitted, dist, precision, leaks, fit_seconds,
                   backend) if run is not None else None
    if dist.kind == "multi-worker":
        from tumor_edge.train.model import barrier

        barrier(dist.strategy)
    if run is None:
        print(f"{dist.task} done; the chief writes the run folder")
    return path


def _fit_trust(model, val, test, spec, run: RunFolder, config: TrainConfig) -> dict[str, Any]:
    """Temperature and OOD fit on the validation split, measured on the test split (tumor_edge.train.evaluate)."""
    from tumor_edge.train.evaluate import fit_trust_for_run

    val_px = load_pixels(val, spec, "decoding validation images for calibration", config.show_progress)
    test_px = load_pixels(test, spec, "decoding test images for calibration", config.show_progress)
    return fit_trust_for_run(model, val_px.pixels, val_px.labels, test_px.pixels, test_px.labels,
                             run.reliability_png, run.ood_params, config.batch_size)


def _finish(config: TrainConfig, run: RunFolder, index, val, test, spec, fitted, dist, precision, leaks,
            fit_seconds: float, backend: dict[str, Any]) -> Path:
    """Chief only: save the best weights as a float32 model, evaluate on the test split, write config.json."""
    import keras

    from tumor_edge.train.evaluate import describe_trust, evaluate_samples, format_metrics, plot_history
    from tumor_edge.train.model import build_classifier

    # A fresh float32 model outside any strategy: no float16/bfloat16 casts reach the exported CPU/edge models,
    # no optimizer state triples the file, and prediction here runs no collective ops with other workers.
    keras.mixed_precision.set_global_policy("float32")
    if dist.kind == "data-parallel":
        from tumor_edge.train.distribute import DataParallel

        DataParallel.release()
    best = build_classifier(len(index.classes), config.image_size, None, config.dropout)
    best.set_weights(fitted.classifier.get_weights())
    best.save(run.model)
    plot_history(run.history, run.curves_png)
    metrics = evaluate_samples(best, test, index.classes, spec, run.path, config.batch_size, "test",
                               cache_dir=config.cache_dir, show_progress=config.show_progress)
    metrics["deduplicated_test_images"] = len(leaks.test) if config.dedup else 0
    metrics["best_checkpoint_by"] = fitted.monitor
    trust = _fit_trust(best, val, test, spec, run, config)  # calibration and OOD: validation fit, test figures
    metrics.update(trust)
    run.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    RunConfig(
        classes=index.classes,
        preprocessing=spec,
        output="probabilities",
        data_root=str(index.root.resolve()),
        data_fingerprint=data_fingerprint(index),
        counts=index.counts(),
        train_config=config.to_dict(),
        phases=fitted.phases,
        device=dist.describe(),
        mixed_precision=precision.policy if precision.mixed else False,
        fit_seconds=round(fit_seconds, 1),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions={**package_versions(), "python": platform.python_version(), "platform": platform.platform()},
        extra={"backend": backend, "throughput": fitted.throughput, "distribution": dist.to_dict(),
               "precision": {"requested": precision.requested, "policy": precision.policy,
                             "reason": precision.reason,
                             "steps_skipped": sum(p["steps_skipped"] for p in fitted.phases)},
               "best_checkpoint": fitted.best,
               "split_leaks": {**leaks.summary(), "dropped": config.dedup}, **trust},
    ).write(run.config)
    print(format_metrics(metrics))
    print(describe_trust(trust))
    print(f"best checkpoint: epoch {fitted.best.get('best_epoch')} ({fitted.best.get('best_phase')}), "
          f"{fitted.monitor} {fitted.best.get('best_value')}")
    speed = fitted.throughput
    if speed.get("images_per_s"):
        print(f"throughput: {speed['images_per_s']} images/s ({1000 * speed['median_step_s']:.1f} ms per step of "
              f"{speed['global_batch']}); first step(s) incl. compiling {speed['first_step_s']} s")
    print(f"run folder: {run.path}")
    return run.path


@dataclass
class FitResult:
    classifier: Any  # best weights restored
    phases: list[dict[str, Any]]
    best: dict[str, Any]
    monitor: str
    throughput: dict[str, Any]


def compile_model(model, learning_rate, num_classes: int, jit_compile: str) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes)],
        jit_compile=JIT_COMPILE[jit_compile],
    )


def _datasets(config: TrainConfig, dist, train_cache, val_cache, num_classes: int):
    """(train, steps per epoch, steps given to fit, validation, validation steps): tf.data on TensorFlow (per
    worker shards under a strategy), a PyDataset over the same cache on JAX and PyTorch."""
    global_batch = config.batch_size * dist.replicas
    steps = steps_for(train_cache.count, global_batch)
    if config.backend != "tensorflow":
        from tumor_edge.train.model import CacheBatches

        train_ds = CacheBatches(train_cache, num_classes, global_batch, shuffle=True, seed=config.seed)
        val_ds = CacheBatches(val_cache, num_classes, global_batch, multiple=dist.replicas) \
            if val_cache.count >= dist.replicas else None
        return train_ds, steps, None, val_ds, None
    strategy = dist.strategy
    many_workers = dist.kind == "multi-worker"
    train_ds = distributed_dataset(strategy, train_cache, num_classes, global_batch, shuffle=True,
                                   seed=config.seed, repeat=True, distributed=dist.distributed)
    val_ds = val_steps = None
    if val_cache.count:
        # Every worker must run as many validation steps as the others: their shards repeat to a fixed count.
        val_ds = distributed_dataset(strategy, val_cache, num_classes, global_batch, repeat=many_workers,
                                     distributed=dist.distributed)
        val_steps = steps_for(val_cache.count, global_batch) if many_workers else None
    return train_ds, steps, steps, val_ds, val_steps


def _callbacks(config: TrainConfig, monitor: str, history_csv: Path | None) -> list:
    import keras

    from tumor_edge.train.model import monitor_mode

    mode = monitor_mode(monitor)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor, mode=mode, patience=config.patience, restore_best_weights=False),
    ]
    if config.lr_schedule == "plateau":  # a schedule object owns the rate otherwise (Keras refuses to set it)
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor, mode=mode, factor=0.3,
                                                           patience=max(1, config.patience // 2), min_lr=1e-7))
    if history_csv is not None:  # the chief's
        callbacks.append(keras.callbacks.CSVLogger(str(history_csv), append=True))
    return callbacks


def fit_phases(config: TrainConfig, dist, train_cache, val_cache, num_classes: int,
               checkpoint: Path | None, history_csv: Path | None) -> FitResult:
    """Build, fit both phases, restore the best weights. `checkpoint`/`history_csv` are None off the chief."""
    from tumor_edge.train.model import BestWeights, StepTimer, build_classifier, set_fine_tune, training_model

    strategy = dist.strategy
    global_batch = config.batch_size * dist.replicas
    many_workers = dist.kind == "multi-worker"
    train_ds, steps, fit_steps, val_ds, val_steps = _datasets(config, dist, train_cache, val_cache, num_classes)
    monitor = config.monitor if val_ds is not None else config.monitor.removeprefix("val_")

    with strategy.scope():
        classifier = build_classifier(num_classes, config.image_size, config.weights, config.dropout,
                                      config.bn_momentum)
        pretrained = classifier.pretrained
        if pretrained:
            set_fine_tune(classifier, None)
        model = training_model(classifier, build_augmenter(config.augment, config.seed), many_workers)
        compile_model(model, learning_rate_for(config.lr_schedule, config.learning_rate, config.epochs, steps),
                      num_classes, config.jit_compile)
    best = BestWeights(classifier, monitor, (lambda m: m.save(checkpoint)) if checkpoint is not None else None)
    timer = StepTimer(global_batch, config.backend)
    phases: list[dict[str, Any]] = []

    def run_phase(name: str, epochs: int, initial_epoch: int, learning_rate: float) -> int:
        best.phase = name
        steps_before = timer.count
        history = model.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch,
                            epochs=initial_epoch + epochs, steps_per_epoch=fit_steps, validation_steps=val_steps,
                            callbacks=[*_callbacks(config, monitor, history_csv), best, timer],
                            verbose=config.verbose)
        ran = timer.count - steps_before
        applied = applied_updates(model.optimizer)  # a fresh optimizer per phase: its own count
        phases.append({"phase": name, "epochs": len(history.epoch), "learning_rate": learning_rate,
                              "steps": ran, "updates_applied": applied, "steps_skipped": ran - applied})
        if ran - applied:
            print(f"warning: phase {name}: loss scaling skipped {ran - applied} of {ran} step(s) (overflowing "
                  f"float16 gradients){'; NO update was applied' if applied == 0 else ''}")
        return initial_epoch + len(history.epoch)

    print(f"phase 1: {'head only, base frozen' if pretrained else 'whole network from scratch'}, "
          f"{config.epochs} epoch(s) of {steps} step(s), global batch {global_batch}")
    done = run_phase("head" if pretrained else "full", config.epochs, 0, config.learning_rate)
    if pretrained and config.fine_tune_epochs > 0:
        if best.restore():
            print(f"phase 2 starts from phase 1's best epoch ({best.best_epoch + 1}, {monitor} {best.best:.4f})")
        with strategy.scope():
            trainable = set_fine_tune(classifier, config.fine_tune_from)
            compile_model(model, learning_rate_for(config.lr_schedule, config.fine_tune_learning_rate,
                                                   config.fine_tune_epochs, steps), num_classes, config.jit_compile)
        print(f"phase 2: fine-tuning {trainable} base layers from index {config.fine_tune_from} "
              f"(BatchNorm frozen, in inference mode), {config.fine_tune_epochs} epoch(s)")
        run_phase("fine-tune", config.fine_tune_epochs, done, config.fine_tune_learning_rate)
    if not best.restore():
        print(f"warning: no epoch gave a finite {monitor}; keeping the last weights")
    return FitResult(classifier, phases, best.summary(), monitor, timer.summary())


def index_dataset(cache, num_classes: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                  shard: tuple[int, int] = (1, 0), repeat: bool = False):
    """(uint8 images, one-hot labels) batches of `cache`; shard = (number of pipelines, this pipeline)."""
    import tensorflow as tf

    height, width, _ = cache.shape
    one_hot = np.eye(num_classes, dtype=np.float32)[cache.labels]

    def load(idx):
        x, y = tf.numpy_function(lambda i: (cache.read(i), one_hot[i]), [idx], [tf.uint8, tf.float32], stateful=False)
        x.set_shape([None, height, width, 3])
        y.set_shape([None, num_classes])
        return x, y

    ds = tf.data.Dataset.range(cache.count)
    count, index = shard
    if count > 1:
        ds = ds.shard(count, index)
    if shuffle:
        ds = ds.shuffle(max(1, cache.count // count + 1), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Sharding is done above, by index, so that a worker never reads another's images.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def steps_for(count: int, global_batch: int) -> int:
    return max(1, -(-count // global_batch))


def distributed_dataset(strategy, cache, num_classes: int, global_batch: int, shuffle: bool = False,
                        seed: int = 0, repeat: bool = False, distributed: bool = False):
    """The dataset `fit` takes: plain on one device, else one sharded pipeline per worker, per-replica batches."""
    if not distributed:
        return index_dataset(cache, num_classes, global_batch, shuffle, seed, repeat=repeat)

    def per_worker(context):
        batch = context.get_per_replica_batch_size(global_batch)
        return index_dataset(cache, num_classes, batch, shuffle, seed,
                             shard=(context.num_input_pipelines, context.input_pipeline_id), repeat=repeat)

    return strategy.distribute_datasets_from_function(per_worker)
