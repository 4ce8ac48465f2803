"""What an explanation costs on this CPU: milliseconds per scan for each method, per model file and input size,
and (given the demo's localisation.json) how well each method's maps point at the lesion.

    python -m benchmarks.explain_cost --bundle BUNDLE_96 --bundle BUNDLE_299 [--localisation WORKDIR/localisation.json]

Each bundle's files (default: model_fp32.onnx and model_int8.onnx) explain --scans generated scans through the
runtime (`tumor_edge.runtime.explain`, exactly what `classify --heatmap` runs) with every method: the exact CAM
(the model's own map: the cost is one inference), occlusion at --grid cells per side (grid*grid + 1 inferences)
and RISE with --masks masks. One warm-up scan, then the median of --scans. Latency does not depend on the weights,
so a random-weight stand-in bundle (benchmarks/standin.py, or `python benchmarks/run_suite.py`) times a 299 px
model as well as a trained one. Writes Markdown to --out (default benchmarks/results/explain-cost-DATE.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.machine import host, load_average
from tumor_edge.runtime import BackendOptions, Classifier, ExplainSettings
from tumor_edge.runtime import explain_prediction as explain


def scans(size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Grey head-like discs with a bright blob: the content does not change the cost, only the size does."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    out = []
    for _ in range(count + 1):
        head = ((y - 0.5) ** 2 + (x - 0.5) ** 2 < 0.16) * 110.0
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = ((y - cy) ** 2 + (x - cx) ** 2 < 0.004) * 120.0
        grey = np.clip(head + blob + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        out.append(np.repeat(grey[..., None], 3, axis=-1))
    return out


def time_method(classifier: Classifier, images: list[np.ndarray], settings: ExplainSettings) -> tuple[float, str]:
    """Median ms per scan (prediction + map) after one warm-up scan, and the label of the map drawn."""
    times, label = [], ""
    for number, image in enumerate(images):
        started = time.perf_counter()
        prediction = classifier.predict(image)
        label = explain(classifier, image, prediction.index, prediction.outputs, settings).label
        if number:
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), label


def cost_table(bundles: list[Path], files: list[str], count: int, grid: int, masks: int, threads: int) -> list[str]:
    lines = ["| bundle px | file | method | map | ms per scan (median) | inferences per scan |",
             "|---:|---|---|---|---:|---:|"]
    methods = {"cam": 1, "occlusion": grid * grid + 1, "rise": masks + 1}
    for bundle in bundles:
        for name in files:
            if not (bundle / name).is_file():
                continue
            classifier = Classifier.from_bundle(bundle, model_file=name, options=BackendOptions(threads=threads))
            size = classifier.preprocessing.height
            images = scans(size, count)
            for method, inferences in methods.items():
                if method == "cam" and "heatmap" not in classifier.output_specs:
                    continue
                ms, label = time_method(classifier, images, ExplainSettings(method=method, grid=grid, masks=masks,
                                                                            batch_size=32))
                lines.append(f"| {size} | {name} | {method} | {label} | {ms:.0f} | {inferences} |")
                print(lines[-1], flush=True)
    return lines


def localisation_table(path: Path) -> list[str]:
    """The demo's pointing game and energy in the lesion per file and method (its localisation.json)."""
    result = json.loads(path.read_text())
    if "skipped" in result:
        return [f"Not measured: {result['skipped']}."]
    lines = [f"From `{path}`: {result['scans']} held-out tumour scans of the demo ({result['per_class']} per class, "
             f"{result['size']} px), pointing tolerance {result['tolerance_px']} px "
             f"({100 * result['tolerance_fraction']:.0f} % of the side).", "",
             "| file | method | pointing | energy in lesion | chance (pointing) | ms per scan |",
             "|---|---|---:|---:|---:|---:|"]
    for name, row in result["files"].items():
        if "skipped" in row:
            lines.append(f"| {name} | not run | | | | |")
            continue
        figures = row["figures"]["all"]
        lines.append(f"| {row.get('file') or name} | {', '.join(row['methods'])} | {100 * figures['pointing']:.0f} % "
                     f"| {100 * figures['energy']:.0f} % | {100 * figures['chance']:.0f} % | "
                     f"{row.get('ms_per_scan') or '-'} |")
    for name, corr in (result.get("correlation_with_fp32") or {}).items():
        if corr.get("mean") is not None:
            lines.append(f"\nCorrelation with the ONNX fp32 file's maps, {name}: mean {corr['mean']:.3f}, lowest "
                         f"{corr['min']:.3f} (n = {corr['n']}).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--file", dest="files", action="append", default=None)
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--masks", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--localisation", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = args.out or Path(__file__).resolve().parent / "results" / f"explain-cost-{today}.md"
    machine = host()
    cpu = f"{machine['cpu']} ({machine['isa']}), load average {load_average()} at the start"
    lines = [f"# Explanation cost and localisation ({today})", "", f"> {RESEARCH_NOTICE}", "",
             f"CPU: {cpu}, {args.threads} threads; {args.scans} scans per row after one warm-up; batch 32 for the "
             "perturbed copies. `python -m benchmarks.explain_cost " + " ".join(f"--bundle {b}" for b in args.bundle)
             + "`.", "", "## Milliseconds per scan", ""]
    lines += cost_table(args.bundle, args.files or ["model_fp32.onnx", "model_int8.onnx"], args.scans, args.grid,
                        args.masks, args.threads)
    if args.localisation is not None:
        lines += ["", "## Do the maps point at the lesion?", "", *localisation_table(args.localisation)]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
