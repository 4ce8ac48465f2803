"""Click commands `train` and `evaluate`. Only click at import time; TensorFlow loads inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tumor_edge.train.backends import BACKENDS, DEFAULT_BACKEND, JIT_CHOICES, LR_SCHEDULES, PRECISIONS
from tumor_edge.train.distribute import STRATEGIES


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder [runs/<timestamp>].")
@click.option("--image-size", type=click.IntRange(min=75), default=299, show_default=True)
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (downloaded once by Keras), 'none' (from scratch), or a weights file.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Phase 1: head only (pretrained) or the whole network (from scratch).")
@click.option("--fine-tune-epochs", type=click.IntRange(min=0), default=10, show_default=True,
              help="Phase 2 (pretrained only): upper base layers at a lower learning rate.")
@click.option("--fine-tune-from", type=click.IntRange(min=0), default=249, show_default=True,
              help="First InceptionV3 layer index unfrozen in phase 2.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--fine-tune-learning-rate", type=float, default=1e-5, show_default=True)
@click.option("--lr-schedule", type=click.Choice(list(LR_SCHEDULES)), default="plateau", show_default=True,
              help="Within each phase: plateau (cut 0.3x when the monitor stalls) or cosine (decay to 1 % by the "
                   "phase's last step; suits short runs).")
@click.option("--dropout", type=click.FloatRange(0, 0.95), default=0.3, show_default=True)
@click.option("--bn-momentum", type=click.FloatRange(0, 1), default=None,
              help="BatchNorm momentum (short from-scratch runs want ~0.9) [Keras' 0.99].")
@click.option("--val-split", type=click.FloatRange(0, 0.9), default=0.15, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--monitor", type=click.Choice(["val_loss", "val_auc", "val_accuracy"]), default="val_loss",
              show_default=True, help="What picks the best checkpoint.")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--dedup", is_flag=True,
              help="Drop validation and test images that duplicate training images (always reported).")
@click.option("--no-augment", is_flag=True, help="Disable all augmentation.")
@click.option("--rotation", type=click.FloatRange(0, 0.5), default=0.04, show_default=True,
              help="Random rotation, fraction of a full turn (0 disables).")
@click.option("--shift", type=click.FloatRange(0, 0.5), default=0.08, show_default=True)
@click.option("--zoom", type=click.FloatRange(0, 0.9), default=0.1, show_default=True)
@click.option("--contrast", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--no-flip", is_flag=True, help="Disable random horizontal flips.")
@click.option("--backend", type=click.Choice(BACKENDS), default=DEFAULT_BACKEND, show_default=True,
              help="The Keras 3 backend that trains (jax: pip install 'tumor-edge[jax]'; torch: pip install torch). "
                   "The saved model is the same model.keras; export reads it with TensorFlow.")
@click.option("--jit-compile", type=click.Choice(JIT_CHOICES), default="auto", show_default=True,
              help="Compile the training step (XLA on TensorFlow/JAX, torch.compile on torch); auto: Keras' choice.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="auto: multi-worker when TF_CONFIG (or --worker-hosts) names several workers, mirrored over "
                   "several GPUs (JAX: data parallel), else one device.")
@click.option("--worker-hosts", default=None,
              help="Multi-worker: host:port of every worker, comma-separated, the same on each (sets TF_CONFIG).")
@click.option("--task-index", type=click.IntRange(min=0), default=None,
              help="Multi-worker: this worker's position in --worker-hosts (0 is the chief, which writes the run).")
@click.option("--mixed-precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: float16 on NVIDIA GPUs, bfloat16 on CPUs with AVX512_BF16/AMX, off otherwise.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where decoded images are cached during the run [system temp folder].")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels of the backend (slower).")
@click.option("--force", is_flag=True, help="Overwrite an existing run folder.")
def train(worker_hosts: str | None, task_index: int | None, no_augment: bool, rotation: float, shift: float,
          zoom: float, contrast: float, no_flip: bool, **options: Any) -> None:
    """Fine-tune an augmented InceptionV3 on DATA (DATA/Training/<class>/*, DATA/Testing/<class>/*)."""
    from tumor_edge.errors import ConfigError
    from tumor_edge.train.fit import AugmentConfig, TrainConfig, run_training

    hosts = tuple(h for h in (worker_hosts or "").split(",") if h.strip())
    if bool(hosts) != (task_index is not None):
        raise ConfigError("--worker-hosts and --task-index go together")
    augment = AugmentConfig(rotation=rotation, shift=shift, flip=not no_flip, zoom=zoom, contrast=contrast,
                            enabled=not no_augment)
    run_training(TrainConfig(**options, augment=augment, worker_hosts=hosts, task_index=task_index))


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Evaluate on DATA/Testing instead of the run's own test split.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[RUN/evaluation...]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing evaluation folder.")
def evaluate(run: Path, data: Path | None, out: Path | None, batch_size: int, force: bool) -> None:
    """Re-run the evaluation of a training RUN, on its test split or another dataset folder."""
    from tumor_edge.train.evaluate import evaluate_run, format_metrics

    metrics = evaluate_run(run, data, out, force, batch_size)
    click.echo(format_metrics(metrics))
