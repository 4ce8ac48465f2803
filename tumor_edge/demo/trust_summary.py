"""The demo summary's trust section: calibration, one heatmap per class, and out-of-distribution figures, all
measured through the runtime on held-out scans, each PNG carrying the research-use notice."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.calibration.ood_sets import generated_sets
from tumor_edge.calibration.plots import pyplot, reliability_diagram
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime import MIN_CAM_CELLS, Classifier, decode_file, is_scan_file, measure_ood_rates, write_overlay
from tumor_edge.runtime import explain_prediction as explain

CALIBRATION_PNG = "calibration.png"
OOD_PNG = "ood.png"
HEATMAP_PREFIX = "heatmap_"
TRIES_PER_CLASS = 16  # held-out scans tried per class to find a correctly classified one


def _owned(name: str) -> bool:
    return name in (CALIBRATION_PNG, OOD_PNG) or (name.startswith(HEATMAP_PREFIX) and name.endswith(".png"))


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def _calibration(run: RunFolder, out_dir: Path, link: str) -> tuple[list[str], dict[str, Any], list[Path]]:
    metrics = run.read_metrics() if run.metrics.is_file() else {}
    cal = metrics.get("calibration") or {}
    lines = ["### Calibration", ""]
    if cal.get("temperature") is None:
        why = cal.get("skipped", "the run records no calibration")
        return lines + [f"No temperature scaling: {why}.", ""], {"temperature": None}, []
    figures = {k: cal.get(k) for k in ("temperature", "fitted_on", "ece_before", "ece_after", "ece_measured_on",
                                       "bins")}
    lines.append(f"Temperature scaling fitted on {cal.get('fitted_on', '?')} validation scans: T = "
                 f"{cal['temperature']:.3g}. Expected calibration error ({cal.get('bins', 15)} bins) on the "
                 f"{cal.get('ece_measured_on', 'test')} split: {_pct(cal.get('ece_before'))} before, "
                 f"{_pct(cal.get('ece_after'))} after scaling.")
    if cal.get("kept_t1_because"):
        fitted = cal.get("fitted_temperature")
        lines.append(f"(T = 1 kept: {cal['kept_t1_because']}"
                     + (f"; the fitted T was {fitted:.3g}" if isinstance(fitted, (int, float)) else "") + ".)")
    written = []
    if run.predictions.is_file():
        with np.load(run.predictions, allow_pickle=False) as data:
            probs, labels = data["probabilities"], data["labels"]
        written.append(reliability_diagram(probs, labels, float(cal["temperature"]), out_dir / CALIBRATION_PNG,
                                           title=f"demo run, held-out test split (n = {len(labels)})"))
        lines += ["", f"![reliability diagram, before and after scaling]({link}/{CALIBRATION_PNG})"]
    return lines + [""], figures, written


def _heatmaps(classifier, files: dict[str, list[Path]], out_dir: Path, link: str
              ) -> tuple[list[str], dict[str, Any], list[Path]]:
    lines = ["### Heatmaps: one held-out scan per class", ""]
    lines += [f"Maps computed on the device by `{classifier.backend.path.name}` (no TensorFlow): the exact class "
              f"activation map when the model has one of at least {MIN_CAM_CELLS}x{MIN_CAM_CELLS} cells, else "
              "occlusion through the model. Red is the most evidence for the class. Each scan is the first held-out "
              "scan of its class that the model classified correctly.", "",
              "| class | scan | predicted | map | heatmap |", "|---|---|---|---|---|"]
    figures, written = {}, []
    for index, name in enumerate(classifier.classes):
        tried = files.get(name, [])[:TRIES_PER_CLASS]
        hit = next((r for r in classifier.iter_predictions(tried, batch_size=8) if r.ok and r.index == index), None)
        if hit is None:
            lines.append(f"| {name} | - | none of {len(tried)} held-out scans classified correctly | - | - |")
            figures[name] = None
            continue
        decoded = decode_file(hit.source, classifier.preprocessing, "middle")
        if decoded.failure is not None:
            continue
        pixels = decoded.pixels[0][0]
        explanation = explain(classifier, pixels, index, hit.outputs)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
        path = write_overlay(out_dir / f"{HEATMAP_PREFIX}{safe}.png", pixels, explanation.map, index,
                             f"{name} {hit.confidence:.2f}: evidence for {name} ({explanation.label}; synthetic "
                             "demo scan)", force=True, method=explanation.label)
        written.append(path)
        figures[name] = {"scan": Path(hit.source).name, "confidence": round(hit.confidence, 4), "png": path.name,
                         "method": explanation.label}
        lines.append(f"| {name} | `{Path(hit.source).name}` | {name} ({hit.confidence:.2f}) | {explanation.label} | "
                     f"![{name}]({link}/{path.name}) |")
    return lines + [""], figures, written


def _ood_figure(rates: dict[str, Any], examples: dict[str, np.ndarray], path: Path) -> Path:
    plt = pyplot()
    names = list(rates["sets"])
    fig = plt.figure(figsize=(max(8, 2.1 * len(names)), 6.2))
    grid = fig.add_gridspec(2, len(names), height_ratios=[1, 1.6])
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        if name in examples:
            ax.imshow(examples[name])
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    labels = names + ["held-out scans\n(false alarms)"]
    values = [100 * (rates["sets"][n]["flagged"] or 0) for n in names] + [100 * (rates["test"]["flagged"] or 0)]
    colours = ["#4c72b0"] * len(names) + ["#c44e52"]
    bars = ax.bar(range(len(labels)), values, color=colours)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.0f} %", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("images warned about (%)")
    ax.set_title("out-of-distribution warnings: generated sets (should be flagged) vs held-out scans (should not)",
                 fontsize=9)
    fig.suptitle(RESEARCH_NOTICE + "\nGenerated sets are synthetic.", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _ood(classifier, files: dict[str, list[Path]], out_dir: Path, link: str, count: int, seed: int
         ) -> tuple[list[str], dict[str, Any], list[Path]]:
    test_paths = [p for paths in files.values() for p in paths]
    rates = measure_ood_rates(classifier, test_paths, count=count, seed=seed)
    scans = []
    if test_paths:
        decoded = decode_file(test_paths[0], classifier.preprocessing, "middle")
        scans = [decoded.pixels[0][0]] if decoded.failure is None else []
    examples = {name: images[0] for name, images in generated_sets(
        1, classifier.preprocessing.size, seed, scans=np.stack(scans) if scans else None).items()}
    path = _ood_figure(rates, examples, out_dir / OOD_PNG)
    check = ("input checks (colour, noise, blank, no dark background) and the feature-space distance fitted on "
             "the validation split" if rates["feature_check"] else "input checks only (no feature-space fit)")
    lines = ["### Out-of-distribution warnings", "",
             f"Each image gets a `warning` when {check} say it is not what the model was trained on "
             "(`classify --abstain` gives such images no label).", "",
             "| set | images | warned | by input checks | by feature distance |", "|---|---|---|---|---|"]
    rows = [(f"{name} (generated)", r) for name, r in rates["sets"].items()]
    for name, r in rows + [("held-out test scans (false alarms)", rates["test"])]:
        lines.append(f"| {name} | {r['count']} | {_pct(r['flagged'])} | {_pct(r['input_checks_flagged'])} | "
                     f"{_pct(r['feature_flagged'])} |")
    lines += ["", f"![out-of-distribution warnings]({link}/{OOD_PNG})", ""]
    return lines, rates, [path]


def trust_summary(run_dir: Path, bundle: Path, test_dir: Path, out_dir: Path, link_base: Path | None = None,
                  ood_count: int = 40, seed: int = 0) -> dict[str, Any]:
    """Write the trust PNGs to `out_dir` (only its own PNGs are replaced) and return the Markdown section (its
    image links relative to `link_base`, default the parent of `out_dir`), the PNGs written and the figures
    shown, JSON-ready."""
    out_dir = prepare_out_dir(Path(out_dir), True, _owned, "trust summary")
    link = Path(os.path.relpath(out_dir, Path(link_base) if link_base is not None else out_dir.parent)).as_posix()
    classifier = Classifier.from_bundle(Path(bundle))
    files = {name: sorted(p for p in (Path(test_dir) / name).glob("*") if is_scan_file(p))
             for name in classifier.classes}  # each class's held-out scans (none for a class without a folder)
    lines = ["## Trust: how far to believe each prediction", "", f"> **{RESEARCH_NOTICE}** The scans are "
             "synthetic (real MRI templates with simulated lesions); these figures describe the pipeline, not "
             "clinical performance.", ""]
    figures: dict[str, Any] = {}
    pngs: list[Path] = []
    for key, (part, shown, written) in {
            "calibration": _calibration(RunFolder(run_dir), out_dir, link),
            "heatmaps": _heatmaps(classifier, files, out_dir, link),
            "ood": _ood(classifier, files, out_dir, link, ood_count, seed)}.items():
        lines += part
        figures[key] = shown
        pngs += written
    figures["model"] = classifier.backend.path.name
    return {"markdown": "\n".join(lines) + "\n", "files": [str(p) for p in pngs], "figures": figures}
