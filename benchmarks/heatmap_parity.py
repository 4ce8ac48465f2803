"""Heatmap parity at 299 px: per exported file, the correlation of its class activation maps with the Keras
model's (goal: >= 0.95 for int8 files).

    python -m benchmarks.heatmap_parity [--workdir /tmp/tumor-edge-heatmap-parity] [--train-seconds 600]

An untrained network's maps are a poor proxy (random features, no structure a quantiser must keep), so this
trains the project's InceptionV3 classifier (`tumor_edge.train.model.build_classifier`, from scratch) briefly on
generated demo scans (synthetic lesions on real MRI templates) at 299 px, for at most --train-seconds of
training steps, in a child process; writes it as a run folder (the run-folder contract); exports it with
`tumor-edge export RUN --int8 --fp16` WITH parity (thresholds loosened: a briefly trained model proves nothing
about accuracy; the point is the maps), which measures each file's heatmaps through the runtime against the
Keras model's on the held-out scans (export.trust_outputs.heatmap_parity). Results go to
benchmarks/results/heatmap-parity-<stamp>.json and .md with the CPU, the load and the model's accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 299
GOAL = 0.95
LOOSE = ("--max-accuracy-drop", "100", "--max-auc-drop", "1", "--min-agreement", "0", "--allow-unproven")


class TimeLimit:
    """Keras callback: stop after `seconds` of training steps (the first step's graph tracing included)."""

    def __new__(cls, seconds: float):
        import keras

        class _Limit(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.start, self.steps = time.perf_counter(), 0

            def on_train_batch_end(self, batch, logs=None):
                self.steps += 1
                if time.perf_counter() - self.start > seconds:
                    self.model.stop_training = True

        return _Limit()


def train_run(data_root: Path, run_dir: Path, seconds: float, batch: int, seed: int = 0) -> dict:
    """Train briefly (child process) and write the run folder export reads."""
    import keras
    import numpy as np

    from tumor_edge.contracts.preprocessing import Preprocessing
    from tumor_edge.contracts.run_folder import RunConfig, RunFolder
    from tumor_edge.data.dataset import discover, load_pixels, stratified_split, write_split
    from tumor_edge.train.model import build_classifier

    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    index = discover(data_root)
    keras.utils.set_random_seed(seed)
    spec = Preprocessing(SIZE, SIZE, "bilinear", "none")  # the model rescales inside (build_classifier)
    train, val = stratified_split(index.train, 0.2, seed)
    tr = load_pixels(train, spec, "train pixels", show_progress=False)
    va = load_pixels(val, spec, "val pixels", show_progress=False)
    model = build_classifier(len(index.classes), SIZE, weights=None, bn_momentum=0.8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    limit = TimeLimit(seconds)
    started = time.perf_counter()
    model.fit(tr.pixels.astype(np.float32), tr.labels, batch_size=batch, epochs=1000, shuffle=True, verbose=2,
              callbacks=[limit])
    train_seconds = time.perf_counter() - started
    val_acc = float(np.mean(model.predict(va.pixels.astype(np.float32), batch_size=16, verbose=0).argmax(1)
                            == va.labels))
    model.save(run.model)
    write_split(run.split, index.root, index.classes, {"train": train, "val": val, "test": index.test}, seed, 0.2)
    facts = {"train_seconds": round(train_seconds, 1), "steps": limit.steps, "batch": batch,
             "train_images": len(tr.labels), "val_accuracy": round(val_acc, 4)}
    RunConfig(classes=list(index.classes), preprocessing=spec, data_root=str(index.root.resolve()),
              counts=index.counts(), train_config={"weights": None, "bn_momentum": 0.8, **facts},
              created=datetime.now(timezone.utc).isoformat(),
              extra={"note": "heatmap-parity stand-in: briefly trained on synthetic demo scans"}).write(run.config)
    return facts


def map_statistics(run_dir: Path, bundle: Path) -> dict:
    """Beyond export's mean: per file, the distribution of per-image map correlations (all classes) and the
    correlation of the map an overlay shows (the Keras model's predicted class), recomputed here (child
    process: TensorFlow) from the Keras trust model and each file through the runtime's Classifier."""
    import keras
    import numpy as np

    from tumor_edge.data.dataset import load_pixels, read_split
    from tumor_edge.export.trust_outputs import map_correlation
    from tumor_edge.modelside.cam import trust_model
    from tumor_edge.runtime import Bundle, scale

    opened = Bundle.open(bundle)
    meta = opened.metadata
    _, test = read_split(Path(run_dir) / "split.json", "test")
    pixels = load_pixels(test, meta.preprocessing, "test pixels", show_progress=False).pixels
    model = trust_model(keras.models.load_model(Path(run_dir) / "model.keras", compile=False))
    scores, ref = (np.asarray(v) for v in model.predict(scale(pixels, meta.preprocessing), batch_size=8, verbose=0)[:2])
    shown = scores.argmax(1)
    result = {}
    for name in opened.models:
        clf = opened.classifier(name)
        maps = np.concatenate([clf.infer_outputs(pixels[i:i + 8])["heatmap"] for i in range(0, len(pixels), 8)])
        per_image = [map_correlation(ref[i:i + 1], maps[i:i + 1]) for i in range(len(pixels))]
        per_image = np.array([np.nan if v is None else v for v in per_image])
        predicted = [map_correlation(ref[i:i + 1, ..., k:k + 1], maps[i:i + 1, ..., k:k + 1])
                     for i, k in enumerate(shown)]
        predicted = np.array([np.nan if v is None else v for v in predicted])
        result[name] = {"mean": float(np.nanmean(per_image)), "min": float(np.nanmin(per_image)),
                        "p05": float(np.nanpercentile(per_image, 5)),
                        "predicted_class_mean": float(np.nanmean(predicted)),
                        "predicted_class_min": float(np.nanmin(predicted)), "images": int(len(pixels))}
    return result


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _load(values) -> str:
    return "unknown" if not values else " ".join(f"{v:.2f}" for v in values)


def render(record: dict) -> str:
    m, t = record["machine"], record["training"]
    lines = ["# Heatmap parity at 299 px", "",
             f"{m['cpu']} ({m['isa']}); load average {_load(record['load_average'][0])} -> "
             f"{_load(record['load_average'][1])}.",
             f"Model: InceptionV3 from scratch, {t['steps']} steps of batch {t['batch']} ({t['train_seconds']} s) on "
             f"{t['train_images']} synthetic demo scans; validation accuracy {100 * t['val_accuracy']:.1f} %; "
             f"Keras test accuracy {_pct(record['keras_accuracy'])} (chance: 25 %). Heatmaps: {record['grid']}.",
             f"Parity test images: {record['n_images']}. Goal: mean map correlation >= {GOAL} (int8).", "",
             "| file | map correlation with Keras (export's mean) | per image: min / 5th pct | predicted class's map: "
             "mean / min | top-1 agreement | goal |", "|---|---|---|---|---|---|"]
    stats = record.get("per_image") or {}
    for name, value in record["heatmap_parity"].items():
        agreement = record["agreement"].get(name)
        goal = "-" if value is None else ("met" if value >= GOAL else "NOT met")
        st = stats.get(name)
        spread = "-" if not st else f"{st['min']:.4f} / {st['p05']:.4f}"
        shown = "-" if not st else f"{st['predicted_class_mean']:.4f} / {st['predicted_class_min']:.4f}"
        lines.append(f"| {name} | {'-' if value is None else f'{value:.4f}'} | {spread} | {shown} | "
                     f"{'-' if agreement is None else f'{agreement:.3f}'} | {goal} |")
    lines += ["", f"Export: {record['export_seconds']:.0f} s (exit {record['export_exit']}). Synthetic data; research "
              "tool, not a diagnostic device."]
    return "\n".join(lines) + "\n"


def _metadata(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}


def _metrics(bundle: Path) -> dict:
    return _metadata(bundle).get("metrics") or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tumor-edge-heatmap-parity"))
    parser.add_argument("--train-seconds", type=float, default=600.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=24, help="demo scans generated per class")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reuse-bundle", action="store_true", help="measure an existing bundle of the workdir")
    args = parser.parse_args()

    from benchmarks.standin import QUICK_EXPORT_ARGS, make_images
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.machine import host, load_average

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    before = load_average()
    run_dir, bundle = work / "run", work / "bundle"
    if not (run_dir / "model.keras").is_file():
        data = make_images(work / "data", SIZE, args.per_class, print)
        subprocess.run([sys.executable, "-m", "benchmarks.heatmap_parity", "--train-only", str(data), str(run_dir),
                        str(args.train_seconds),
                        str(args.batch)], check=True)
    facts = json.loads((run_dir / "config.json").read_text())["train_config"]
    started = time.perf_counter()
    env = dict(os.environ, XDG_STATE_HOME=str(work / "state"), TF_CPP_MIN_LOG_LEVEL="2")
    exit_code = 0
    if not (args.reuse_bundle and "heatmap_parity" in _metrics(bundle)):
        cmd = [sys.executable, "-m", "tumor_edge.cli", "export", str(run_dir), "--out", str(bundle), "--int8",
               "--fp16", "--force", *LOOSE, *QUICK_EXPORT_ARGS]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        print(proc.stdout[-3000:], proc.stderr[-2000:])
        exit_code = proc.returncode
    export_seconds = time.perf_counter() - started
    if export_seconds < 60:  # reused: the export's own record of its time
        export_seconds = float(_metadata(bundle).get("provenance", {}).get("export_seconds", export_seconds))
    stats = subprocess.run([sys.executable, "-m", "benchmarks.heatmap_parity", "--stats-only", str(run_dir),
                            str(bundle)], env=env, capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    meta = BundleMetadata.read(bundle)
    parity = meta.metrics.get("parity") or {}
    grid = meta.extra_outputs["heatmap"].description if "heatmap" in meta.extra_outputs else "none"
    record = {"machine": host(), "load_average": [before, load_average()], "training": facts,
              "heatmap_parity": meta.metrics.get("heatmap_parity") or {},
              "agreement": {k: v.get("agreement") for k, v in (parity.get("files") or {}).items()},
              "keras_accuracy": (parity.get("keras") or {}).get("accuracy"), "n_images": parity.get("n_images"),
              "per_image": json.loads(stats),
              "grid": grid, "export_seconds": export_seconds, "export_exit": exit_code,
              "goal": GOAL, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M")
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"heatmap-parity-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    base.with_suffix(".md").write_text(render(record))
    print(render(record))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--stats-only":
        print(json.dumps(map_statistics(Path(sys.argv[2]), Path(sys.argv[3]))))
    elif len(sys.argv) == 6 and sys.argv[1] == "--train-only":
        print(train_run(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
    else:
        main()
