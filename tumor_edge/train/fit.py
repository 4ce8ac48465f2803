"""`tumor-edge train`: check data, split, fit in two phases, keep the best checkpoint, evaluate honestly."""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import discover, load_pixels, stratified_split, write_split
from tumor_edge.errors import DatasetError
from tumor_edge.runtime.preprocess import Preprocessing
from tumor_edge.train.config import TrainConfig, data_fingerprint, prepare_run_dir, versions


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
    from tumor_edge.train.schedule import fit_phases

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
    path = None
    if run is not None:
        path = _finish(config, run, index, val, test, spec, fitted, dist, precision, leaks, fit_seconds, backend)
    if dist.kind == "multi-worker":
        from tumor_edge.train.callbacks import barrier

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
        versions=versions(),
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
