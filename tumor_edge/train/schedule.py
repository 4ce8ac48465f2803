"""The fitting schedule: phase 1 (head only, or everything from scratch), then phase 2 (fine-tune the top of a
pretrained base) starting from phase 1's best weights; the best epoch of either phase is what the run keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.train.backends import applied_updates, learning_rate_for
from tumor_edge.train.callbacks import BestWeights, StepTimer, monitor_mode
from tumor_edge.train.config import TrainConfig
from tumor_edge.train.pipeline import distributed_dataset, steps_for


@dataclass
class FitResult:
    classifier: Any  # best weights restored
    phases: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    monitor: str = "val_loss"
    throughput: dict[str, Any] = field(default_factory=dict)


JIT_COMPILE = {"auto": "auto", "on": True, "off": False}  # --jit-compile -> Keras' compile(jit_compile=...)


def compile_model(model, learning_rate, num_classes: int, jit_compile: str = "auto") -> None:
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
        from tumor_edge.train.callbacks import CacheBatches

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
    from tumor_edge.train.callbacks import training_model
    from tumor_edge.train.config import build_augmenter
    from tumor_edge.train.model import build_classifier, set_fine_tune

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
    result = FitResult(classifier, monitor=monitor)

    def run_phase(name: str, epochs: int, initial_epoch: int, learning_rate: float) -> int:
        best.phase = name
        steps_before = timer.count
        history = model.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch,
                            epochs=initial_epoch + epochs, steps_per_epoch=fit_steps, validation_steps=val_steps,
                            callbacks=[*_callbacks(config, monitor, history_csv), best, timer],
                            verbose=config.verbose)
        ran = timer.count - steps_before
        applied = applied_updates(model.optimizer)  # a fresh optimizer per phase: its own count
        result.phases.append({"phase": name, "epochs": len(history.epoch), "learning_rate": learning_rate,
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
    result.best = best.summary()
    result.throughput = timer.summary()
    return result
