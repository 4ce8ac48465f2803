"""Training throughput (images/s) of tumor-edge's own training model on a GPU, per precision policy and XLA on/off.

    python -m benchmarks.training_gpu [--image-size 299] [--batch 64] [--steps 16] [--rounds 2]
        [--configs jax:xla:float32,...] [--deadline-s 420] [--out benchmarks/results/training-gpu]

What is timed is `tumor_edge.train.trainer.training_model`: the augmentation layers feeding the InceptionV3
classifier from `build_classifier`, every layer trainable (the `--weights none` path and a fine-tune from layer 0,
the heaviest step `train` runs), uint8 batches cast inside the graph, Adam, categorical cross-entropy, through
Keras' own `fit`. Each configuration runs in its own process (a Keras precision policy is process-global, and an
out-of-memory or compiler failure stays one row); the first epoch (tracing and compiling) is reported apart from
the timed epochs. A configuration is `backend:xla|eager:policy`:

- `tensorflow:xla|eager:*` is what `tumor-edge train` runs (Keras' default `jit_compile="auto"` is XLA on);
- `jax:xla:*` is the same Keras model compiled by XLA through JAX, and `torch:eager:*` the same model run eagerly on
  cuDNN through PyTorch. They stand in for TensorFlow on a GPU machine whose image has JAX and PyTorch but no
  TensorFlow, and where a TensorFlow GPU wheel (hundreds of MB plus CUDA 12 libraries) cannot be carried: the
  policies' ratios and XLA's effect carry over, the absolute figures are those backends'.

Configurations run in the order given until --deadline-s; each result is appended to <out>.json / <out>.md as it
lands, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_CONFIGS = ("jax:xla:float32,jax:xla:mixed_float16,jax:xla:mixed_bfloat16,"
                   "torch:eager:float32,torch:eager:mixed_float16,torch:eager:mixed_bfloat16,jax:eager:float32")


def _device(backend: str) -> dict:
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        stats = dev.memory_stats() or {}
        return {"device": f"{dev.platform}:{dev.device_kind}", "peak_gpu_bytes": stats.get("peak_bytes_in_use"),
                "framework": f"jax {jax.__version__}"}
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return {"device": "cpu", "peak_gpu_bytes": None, "framework": f"torch {torch.__version__}"}
        return {"device": f"cuda:{torch.cuda.get_device_name(0)}", "framework": f"torch {torch.__version__}",
                "peak_gpu_bytes": torch.cuda.max_memory_allocated()}
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return {"device": gpus[0].name if gpus else "cpu", "peak_gpu_bytes": None,
            "framework": f"tensorflow {tf.__version__}"}


def child(config: str, args: argparse.Namespace) -> dict:
    """One configuration, in this process: build, first epoch, timed epochs. KERAS_BACKEND is set by the parent."""
    import keras
    import numpy as np

    from tumor_edge.train.augment import AugmentConfig, build_augmenter
    from tumor_edge.train.model import build_classifier
    from tumor_edge.train.trainer import training_model

    backend, mode, policy = config.split(":")
    keras.mixed_precision.set_global_policy(policy)
    classifier = build_classifier(4, args.image_size, weights=None)
    model = training_model(classifier, build_augmenter(AugmentConfig(enabled=args.augment), seed=0))
    if backend != "tensorflow":  # TrainingModel's overrides are TensorFlow's multi-worker work-arounds
        model = keras.Model(model.input, model.output, name="training")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=(mode == "xla"))
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, n)]
    t0 = time.perf_counter()
    model.fit(x[: args.batch * 2], y[: args.batch * 2], batch_size=args.batch, epochs=1, verbose=0)
    first_s = time.perf_counter() - t0
    rounds = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        history = model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)  # logs -> floats: synchronous
        rounds.append(time.perf_counter() - t0)
    loss = float(history.history["loss"][-1])
    best = min(rounds)
    return {"config": config, "backend": backend, "mode": mode, "policy": policy, "keras": keras.__version__,
            "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
            "images_per_s": round(n / best, 1), "ms_per_step": round(1000 * best / args.steps, 2),
            "all_rounds_s": [round(r, 3) for r in rounds], "first_epoch_s": round(first_s, 1),
            "final_loss_finite": bool(np.isfinite(loss)), **_device(backend)}


def _markdown(record: dict) -> str:
    rows = record["results"]
    ref: dict[str, float] = {}  # float32 per backend, XLA on where both ran
    for r in sorted(rows, key=lambda r: r.get("mode") != "xla"):
        if r.get("policy") == "float32" and "images_per_s" in r:
            ref.setdefault(r["backend"], r["images_per_s"])
    lines = [f"# Training throughput on a GPU ({record['date']})", "",
             f"{record['gpu']}; host CPU {record['host_cpu']}; {record['image_size']} px, batch {record['batch']}, "
             f"{record['steps']} steps per timed epoch, best of {record['rounds']}; all layers trainable, augmentation "
             f"{'in the graph' if record.get('augment', True) else 'off (--no-augment)'}, uint8 input", "",
             "| backend | XLA | policy | images/s | ms/step | vs float32 (same backend) | first epoch s (compile) "
             "| peak GPU GiB | loss finite |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['config']} | | | failed: {r.get('error', '?')} | | | | | |")
            continue
        peak = f"{r['peak_gpu_bytes'] / 2**30:.1f}" if r.get("peak_gpu_bytes") else ""
        rel = f"{r['images_per_s'] / ref[r['backend']]:.2f}x" if r["backend"] in ref else ""
        lines.append(f"| {r['framework']} | {'on' if r['mode'] == 'xla' else 'off'} | {r['policy']} | "
                     f"{r['images_per_s']} | {r['ms_per_step']} | {rel} | {r['first_epoch_s']} | {peak} | "
                     f"{r['final_loss_finite']} |")
    lines += ["", record["note"]]
    return "\n".join(lines) + "\n"


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return "; ".join(out.stdout.strip().splitlines()) or "no GPU (nvidia-smi printed nothing)"
    except (OSError, subprocess.TimeoutExpired):
        return "no GPU (no nvidia-smi)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--deadline-s", type=float, default=420)
    parser.add_argument("--per-config-s", type=float, default=240)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training-gpu"))
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="augmentation layers in the graph (as train runs); --no-augment shows their cost")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return
    from tumor_edge.machine import machine_info

    start = time.monotonic()
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": _gpu_name(),
              "host_cpu": f"{machine_info().get('cpu_model')} ({os.cpu_count()} CPUs)",
              "augment": args.augment, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
              "rounds": args.rounds,
              "note": "A row's ratio is against float32 on the same backend (XLA on where both ran). TensorFlow rows "
                      "appear where the machine has TensorFlow with a GPU; see the script's docstring.",
              "results": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for config in args.configs.split(","):
        left = args.deadline_s - (time.monotonic() - start)
        if left < 30:
            record["results"].append({"config": config, "backend": config.split(":")[0], "error": "skipped: deadline"})
            continue
        env = {**os.environ, "KERAS_BACKEND": config.split(":")[0], "TF_CPP_MIN_LOG_LEVEL": "2",
               "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        cmd = [sys.executable, "-m", "benchmarks.training_gpu", "--child", config, "--image-size", str(args.image_size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--rounds", str(args.rounds),
               "--augment" if args.augment else "--no-augment"]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=min(left, args.per_config_s))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                row = json.loads(lines[-1][len("RESULT "):])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"config": config, "backend": config.split(":")[0], "error": tail[:200]}
        except subprocess.TimeoutExpired as err:  # keep the child's last words: compiling, or stuck where?
            said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
            row = {"config": config, "backend": config.split(":")[0],
                   "error": f"timed out after {time.monotonic() - t0:.0f} s", "stderr_tail": said[-600:]}
        row["wall_s"] = round(time.monotonic() - t0, 1)
        record["results"].append(row)
        print(json.dumps(row), flush=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(_markdown(record))
    print(_markdown(record))


if __name__ == "__main__":
    main()
