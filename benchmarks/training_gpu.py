"""Training throughput of `tumor-edge train` itself on a GPU, per Keras backend, precision and jit on/off.

    python -m benchmarks.training_gpu [--configs jax:on:bfloat16,...] [--images-per-class 256]
        [--image-size 299] [--batch 64] [--epochs 2] [--deadline-s 540] [--per-config-s 170]
        [--out benchmarks/results/training-gpu-DATE] [--complete first|all|none] [--plan] [--smoke]

What runs is the CLI, `python -m tumor_edge.cli train DATA --backend B --jit-compile J --mixed-precision P`, on a
demo set generated here first (`tumor-edge demo-data` when its templates are installed, else the script's own
synthetic heads with lesions: numpy and Pillow only), from scratch (`--weights none`: every layer trains, the
heaviest step `train` runs), no validation part, one process per configuration with its own deadline. `train`
times every step itself (tumor_edge.train.model.StepTimer: step end to step end, the loss read back so
asynchronous backends have finished) and prints the figures as a JSON line when fitting ends; the script reads
that line, so a run cut short after fitting still counts. Recorded per configuration: images/s and the median
step time, the first step (tracing + compiling, reported apart), peak GPU memory (JAX's allocator peak with
preallocation off; PyTorch's max_memory_allocated; TensorFlow's peak), and the whole run's wall time.

A configuration is `backend:jit:precision[:noaug]`: backend tensorflow|jax|torch; jit on|off|auto (XLA on
TensorFlow/JAX, torch.compile on torch); precision off|float16|bfloat16; `noaug` adds --no-augment (the cost of
the augmentation layers). A configuration whose backend is not installed is skipped with the reason.

JAX's compile time: Keras' augmentation layers that resample (rotation, shift, zoom: an affine transform each,
gathers over the image) sit in the same XLA program as InceptionV3. On a CPU (75 px, batch 8, process CPU time on a
loaded 2-core AMD Zen 5), the first step took 24 s and later steps 0.29 s with flip and contrast only, against 60 s
and 1.48 s with rotation alone; all five layers: 72 s wall to compile. The `noaug` rows measure that on a GPU.
`train` keeps XLA's compiled programs in a persistent cache (tumor_edge.train.backends.configure_jax), so the
default list runs jax:on:bfloat16 twice: the second first-step time is a warm cache's. Training
batches always have one shape (tumor_edge.train.model.CacheBatches tops the last batch up), so a run compiles
its step once per phase.

Results are appended to <out>.json / <out>.md as each configuration ends. The prepared call for a lent GPU machine
(10 minutes a command; the working tree is ~2.5 MB):

    timeout 590 python -m benchmarks.training_gpu --deadline-s 560 --work /tmp/bench \
        --out $OUT/training-gpu-$(date +%F)

On a CPU, `--smoke` runs two configurations at 75 px (measured: 2-5 minutes on a loaded 2-core machine, mostly
JAX's compile), and `--plan` generates the data and prints the commands in seconds (the CI test).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_CONFIGS = ("jax:on:bfloat16:noaug,jax:on:bfloat16,jax:on:bfloat16,torch:off:bfloat16,jax:on:float16,"
                   "jax:on:off,torch:off:off,torch:on:bfloat16,tensorflow:on:float16,tensorflow:on:bfloat16")
SMOKE_CONFIGS = "jax:on:off:noaug,torch:off:off:noaug"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
THROUGHPUT_PREFIX = "fit throughput (json): "
NOTE = ("Research benchmark of a research tool (not a diagnostic device). Images/s = global batch / median step "
        "time, step end to step end (loading, augmentation and the step); the first step of each phase holds the "
        "tracing and compiling and is reported apart.")


def parse_config(text: str) -> dict:
    parts = text.strip().split(":")
    if len(parts) not in (3, 4) or parts[0] not in ("tensorflow", "jax", "torch") \
            or parts[1] not in ("on", "off", "auto") or parts[2] not in ("off", "float16", "bfloat16") \
            or (len(parts) == 4 and parts[3] != "noaug"):
        raise SystemExit(f"error: bad configuration {text!r}: backend:jit:precision[:noaug], e.g. jax:on:bfloat16")
    return {"config": text.strip(), "backend": parts[0], "jit": parts[1], "precision": parts[2],
            "augment": len(parts) == 3}


def _toy_image(label: int, size: int, rng):
    """A grey head-like ellipse whose lesion position and shape carry the class. Synthetic."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    head = (((xx - cx) / 0.42) ** 2 + ((yy - cy) / 0.46) ** 2) < 1.0
    img = np.where(head, 90 + 25 * np.sin(xx * 25 + rng.uniform(0, 6)) * np.cos(yy * 19), 5.0)
    r = rng.uniform(0.07, 0.10)
    if label == 0:
        d = np.hypot(xx - cx - rng.choice([-1, 1]) * rng.uniform(0.15, 0.22), yy - cy - rng.uniform(-0.15, 0.1))
        img = np.where(d < r, 210.0, np.where(d < r * 0.5, 60.0, img))
    elif label == 1:
        d = np.hypot(xx - cx - rng.uniform(-0.15, 0.15), (yy - cy + 0.38) * 1.6)
        img = np.where((d < r * 1.3) & head, 235.0, img)
    elif label == 3:
        img = np.where(np.hypot(xx - cx, yy - cy - 0.18) < r * 0.7, 230.0, img)
    img = img * rng.uniform(0.8, 1.15) + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int, size: int, test_per_class: int) -> str:
    """The demo set train reads: `tumor-edge demo-data` when it can run here, else synthetic heads. Says which."""
    import numpy as np
    from PIL import Image

    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    try:
        proc = subprocess.run([sys.executable, "-m", "tumor_edge.cli", "demo-data", str(root), "--size", str(size),
                               "--per-class", str(per_class + test_per_class), "--force"],
                              capture_output=True, text=True, timeout=120, env=env)
        if proc.returncode == 0:
            return f"tumor-edge demo-data ({per_class + test_per_class} per class, {size} px)"
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
    except subprocess.TimeoutExpired:
        why = "demo-data took over 120 s"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for split, count in (("Training", per_class), ("Testing", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_toy_image(label, size, rng)).convert("RGB").save(folder / f"{i:05d}.jpg", quality=92)
    return f"synthetic heads ({per_class} + {test_per_class} per class, {size} px; demo-data unavailable: {why})"


def _pythonpath() -> str:
    repo = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)


def train_command(cfg: dict, data: Path, run: Path, cache: Path, args) -> list[str]:
    cmd = [sys.executable, "-m", "tumor_edge.cli", "train", str(data), "--out", str(run), "--force",
           "--backend", cfg["backend"], "--jit-compile", cfg["jit"], "--mixed-precision", cfg["precision"],
           "--weights", "none", "--image-size", str(args.image_size), "--batch-size", str(args.batch),
           "--epochs", str(args.epochs), "--fine-tune-epochs", "0", "--val-split", "0", "--cache-dir", str(cache)]
    return cmd + ([] if cfg["augment"] else ["--no-augment"])


def run_one(cfg: dict, data: Path, work: Path, timeout: float, args, complete: bool) -> dict:
    """One `tumor-edge train` process: its throughput line, wall time, and its output's tail on failure.

    Unless `complete`, the process is stopped once fitting has printed its figures (the test-split evaluation
    and plots after it cost device time and measure nothing here)."""
    row = dict(cfg)
    if importlib.util.find_spec(cfg["backend"]) is None:
        return {**row, "skipped": f"{cfg['backend']} is not installed here"}
    run = work / f"run-{len(list(work.glob('run-*')))}"
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TUMOR_EDGE_JAX_CACHE_DIR": str(work / "jax-cache")}
    t0 = time.monotonic()
    lines: list[str] = []
    state = {"deadline": False, "stopped": False}

    with subprocess.Popen(train_command(cfg, data, run, work, args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env) as proc:
        def kill() -> None:
            state["deadline"] = True
            proc.kill()

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith(THROUGHPUT_PREFIX) and not complete:
                    state["stopped"] = True
                    proc.terminate()
            code = proc.wait()
        finally:
            watchdog.cancel()
    row["wall_s"] = round(time.monotonic() - t0, 1)
    out = "".join(lines)
    found = [ln[len(THROUGHPUT_PREFIX):] for ln in out.splitlines() if ln.startswith(THROUGHPUT_PREFIX)]
    if found:
        row.update(json.loads(found[-1]))
    banner = [ln for ln in out.splitlines() if ln.startswith("Keras ")]
    if banner:
        row["banner"] = banner[-1][:300]
    if state["deadline"]:
        row["error"] = f"deadline: stopped after {timeout:.0f} s"
    elif code != 0 and not state["stopped"]:
        row["error"] = f"exit {code}"
    if "error" in row:
        row["output_tail"] = out[-2000:].strip()
    row["stopped_after_fit"] = state["stopped"]
    row["run_folder_complete"] = (run / "metrics.json").is_file()
    return row


def markdown(record: dict) -> str:
    lines = [f"# `tumor-edge train` throughput ({record['date']})", "",
             f"GPU: {record['gpu']}; host {record['host_cpu']}; data: {record['data']}; {record['image_size']} px, "
             f"batch {record['batch']}, {record['epochs']} epoch(s) from scratch, no validation part.", "",
             "| configuration | backend | images/s | ms/step | first step s (compile) | peak GPU GiB | wall s "
             "| run folder | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        peak = f"{r['peak_device_bytes'] / 2**30:.1f}" if r.get("peak_device_bytes") else ""
        step = f"{1000 * r['median_step_s']:.1f}" if r.get("median_step_s") else ""
        note = r.get("skipped") or r.get("error") or ""
        lines.append(f"| {r['config']} | {(r.get('banner') or r['backend'])[:60]} | {r.get('images_per_s') or ''} | "
                     f"{step} | {r.get('first_step_s', '')} | {peak} | {r.get('wall_s', '')} | "
                     f"{'yes' if r.get('run_folder_complete') else 'no'} | {note} |")
    return "\n".join(lines + ["", record["note"]]) + "\n"


def _gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return "; ".join(out.stdout.strip().splitlines()) or "none (nvidia-smi printed nothing)"
    except (OSError, subprocess.TimeoutExpired):
        return "none (no nvidia-smi)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--images-per-class", type=int, default=256, help="Training images per class")
    parser.add_argument("--test-per-class", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=540, help="for everything, data generation included")
    parser.add_argument("--per-config-s", type=float, default=170)
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/training-gpu-{time.strftime('%F')}"))
    parser.add_argument("--work", type=Path, default=None, help="data, runs and caches [a temporary folder]")
    parser.add_argument("--complete", choices=("first", "all", "none"), default="first",
                        help="which runs go on past fitting to a full run folder: the first of each backend")
    parser.add_argument("--plan", action="store_true", help="generate the data, print the commands, run nothing")
    parser.add_argument("--smoke", action="store_true",
                        help=f"CPU check of the script: {SMOKE_CONFIGS} at 75 px, 8 images per class, batch 8")
    args = parser.parse_args(argv)
    if args.smoke:
        args.configs = SMOKE_CONFIGS if args.configs == DEFAULT_CONFIGS else args.configs
        args.images_per_class, args.test_per_class, args.image_size, args.batch, args.epochs = 8, 2, 75, 8, 1
    configs = [parse_config(c) for c in args.configs.split(",") if c.strip()]
    start = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="tumor-edge-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    made = make_dataset(data, args.images_per_class, args.image_size, args.test_per_class)
    print(f"data: {made} in {time.monotonic() - start:.0f} s", flush=True)
    if args.plan:
        for cfg in configs:
            print(" ".join(train_command(cfg, data, work / "run", work, args)))
        return 0
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": _gpu_name(), "host_cpu": f"{os.cpu_count()} CPUs",
              "data": made, "image_size": args.image_size, "batch": args.batch, "epochs": args.epochs,
              "note": NOTE, "results": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    completed: set[str] = set()
    for cfg in configs:
        left = args.deadline_s - (time.monotonic() - start)
        if left < 20:
            row = {**cfg, "skipped": "overall deadline"}
        else:
            complete = args.complete == "all" or (args.complete == "first" and cfg["backend"] not in completed)
            row = run_one(cfg, data, work, min(left, args.per_config_s), args, complete)
            if row.get("run_folder_complete"):
                completed.add(cfg["backend"])
        record["results"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "output_tail"}), flush=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
