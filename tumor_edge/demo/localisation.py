"""Where do the maps point? Pointing game and energy in the lesion on held-out tumour scans, for every model file.

The demo records every lesion it draws, so whether an explanation points at the tumour is measured, not assumed.
Each model file explains each scan's true class as the runtime would; a random point and the brightest pixel are
the baselines, and the int8 files' maps are correlated with the fp32 file's to show whether quantization moved
the evidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.data.dataset import discover
from tumor_edge.demo.generate import lesion_mask
from tumor_edge.runtime import TOLERANCE_FRACTION, ExplainSettings, Tally, map_correlation, resize_mask, tolerance_px
from tumor_edge.runtime import explain_prediction as explain

FP32_REFERENCE = "onnx fp32"


@dataclass(frozen=True)
class LocalisationConfig:
    per_class: int = 8  # held-out tumour scans per class
    grid: int = 8  # occlusion cells per side, RISE's mask cells
    masks: int = 64  # RISE masks per scan (about occlusion's 65 inferences at grid 8)
    batch_size: int = 32
    methods: tuple[str, ...] = ("auto", "rise")  # auto: what classify --heatmap draws (occlusion at 96 px)
    keras_methods: tuple[str, ...] = ("auto",)  # Keras is the slowest subject; its maps match the fp32 file's


class KerasScores:
    """The Keras model behind the same `infer_outputs` the runtime's Classifier has (it takes RGB 0..255)."""

    def __init__(self, path: Path):
        import keras

        self.model = keras.models.load_model(path, compile=False)

    def infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"scores": np.asarray(self.model.predict_on_batch(np.asarray(batch, np.float32)), np.float64)}


def tumour_scans(data_root: Path, per_class: int) -> list[tuple[Path, str, int, np.ndarray]]:
    """(scan, class, class index, lesion mask) for the first `per_class` held-out scans of each lesion class."""
    index = discover(data_root)
    picked: list[tuple[Path, str, int, np.ndarray]] = []
    for label, name in enumerate(index.classes):
        found = ((s.path, name, label, lesion_mask(data_root, s.path)) for s in index.test if s.label == label)
        picked += islice((scan for scan in found if scan[3] is not None), per_class)
    return picked


def _subjects(run_dir: Path, bundle: Path) -> dict[str, Callable[[], Any]]:
    """name -> a function that opens it (only the files this demo has, and LiteRT's only when installed)."""
    from tumor_edge.runtime import Classifier

    subjects: dict[str, Callable[[], Any]] = {}
    keras_file = RunFolder(run_dir).model
    if keras_file.is_file():
        subjects["keras"] = lambda: KerasScores(keras_file)
    for name, file in ((FP32_REFERENCE, "model_fp32.onnx"), ("onnx int8", "model_int8.onnx"),
                       ("tflite int8", "model_int8.tflite")):
        if (Path(bundle) / file).is_file():
            subjects[name] = lambda file=file: Classifier.from_bundle(bundle, model_file=file)
    return subjects


def measure_localisation(run_dir: Path, bundle: Path, data_root: Path,
                         config: LocalisationConfig = LocalisationConfig()) -> dict[str, Any]:
    """The figures per file and class (JSON-ready), with the maps' method and cost."""
    from tumor_edge.runtime import RESIZE_METHODS, decode_file

    spec = BundleMetadata.read(bundle).preprocessing
    scans = tumour_scans(Path(data_root), config.per_class)
    if not scans:
        return {"skipped": "the demo data has no lesion masks: regenerate it with --force"}
    pixels = [decode_file(path, spec, "middle").pixels[0][0] for path, *_ in scans]
    masks = [resize_mask(mask, (spec.height, spec.width), RESIZE_METHODS[spec.resize]) for *_, mask in scans]
    files: dict[str, Any] = {}
    maps: dict[tuple[str, str], list[np.ndarray]] = {}
    keys: dict[tuple[str, str], str] = {}  # (file, method asked) -> its row, e.g. "onnx int8, occlusion 8x8"
    for name, opener in _subjects(run_dir, bundle).items():
        try:
            model = opener()
        except Exception as err:  # a file this machine cannot run (LiteRT missing...) is reported, not fatal
            files[name] = {"skipped": f"{type(err).__name__}: {str(err)[:160]}"}
            continue
        for method in config.keras_methods if name == "keras" else config.methods:
            settings = ExplainSettings(method=method, grid=config.grid, masks=config.masks,
                                       batch_size=config.batch_size)
            row, maps[name, method] = _measure(model, scans, pixels, masks, settings)
            keys[name, method] = f"{name}, {', '.join(row['methods'])}"
            files[keys[name, method]] = {**row, "file": name}
        del model
    tally = Tally()
    for (_, class_name, _, _), scan, mask in zip(scans, pixels, masks):
        tally.add(class_name, scan[..., :3].mean(axis=-1), mask)
    files["no model: brightest pixel"] = {"figures": tally.summary(), "methods": ["scan brightness"],
                                          "ms_per_scan": None, "file": None}
    correlations = {}
    for (name, method), values in maps.items():
        reference = maps.get((FP32_REFERENCE, method))
        if name != FP32_REFERENCE and reference is not None:
            found = [v for v in (map_correlation(a, b) for a, b in zip(values, reference)) if v is not None]
            correlations[keys[name, method]] = {"mean": float(np.mean(found)) if found else None,
                                                 "min": float(np.min(found)) if found else None, "n": len(found)}
    return {"scans": len(scans), "excluded": int(sum(not mask.any() for mask in masks)),
            "per_class": config.per_class, "grid": config.grid, "masks": config.masks,
            "tolerance_px": round(tolerance_px((spec.height, spec.width)), 2),
            "tolerance_fraction": TOLERANCE_FRACTION, "size": spec.height, "files": files,
            "correlation_with_fp32": correlations}


def _measure(model, scans, pixels, masks, settings: ExplainSettings) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One file, one method, every scan: its figures, the methods that drew its maps, its cost, the maps."""
    tally, methods, correct, maps = Tally(), set(), 0, []
    started = time.perf_counter()
    for (_, class_name, label, _), scan, mask in zip(scans, pixels, masks):
        outputs = model.infer_outputs(scan[None])
        correct += int(np.argmax(outputs["scores"][0]) == label)
        extra = {role: value[0] for role, value in outputs.items() if role != "scores"}
        explanation = explain(model, scan, label, extra, settings)
        methods.add(explanation.label)
        maps.append(explanation.map)
        tally.add(class_name, explanation.map, mask)
    return {"figures": tally.summary(), "methods": sorted(methods), "correct": correct,
            "ms_per_scan": round(1000 * (time.perf_counter() - started) / len(scans), 1)}, maps


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.0f} %"


def localisation_markdown(result: dict[str, Any]) -> str:
    """The summary's section: a table per file and class, the chance level, the int8-vs-fp32 correlation."""
    lines = ["## Do the maps point at the lesion? (held-out tumour scans, lesions known)", ""]
    if "skipped" in result:
        return "\n".join(lines + [f"Not measured: {result['skipped']}.", ""])
    files = result["files"]
    classes = sorted({c for f in files.values() for c in f.get("figures", {}) if c != "all"})
    lines += [f"{result['scans']} held-out tumour scans ({result['per_class']} per class), each file explaining "
              f"the true class (RISE: {result['masks']} random masks). Pointing: the map's maximum lies on the "
              f"lesion or within {result['tolerance_px']} px of it ({100 * result['tolerance_fraction']:.0f} % of "
              f"the {result['size']} px side); energy: the share of positive evidence on lesion pixels; chance: a "
              "random point or a uniform map. These synthetic lesions enhance, so the brightest pixel, which needs "
              "no model, scores high too. Goal: pointing >= 80 %."
              + (f" {result['excluded']} lesion(s) with no pixel left at {result['size']} px are excluded from "
                 "every row." if result.get("excluded") else ""), "",
              "| file | method | ms/scan | " + " | ".join(f"{c} pointing / energy" for c in classes)
              + " | all: pointing / energy | chance: pointing |",
              "|---|---|---:|" + "---|" * len(classes) + "---|---|"]
    for name, entry in files.items():
        if "skipped" in entry:
            lines.append(f"| {name} | not run: {entry['skipped']} |")
            continue
        figures = entry["figures"]
        cells = [f"{_pct(figures[c]['pointing'])} / {_pct(figures[c]['energy'])}" if c in figures else "-"
                 for c in classes]
        cost = "-" if entry.get("ms_per_scan") is None else entry["ms_per_scan"]
        lines.append(f"| {entry.get('file') or name} | {', '.join(entry['methods'])} | {cost} | " + " | ".join(cells)
                     + f" | **{_pct(figures['all']['pointing'])}** / {_pct(figures['all']['energy'])} | "
                     f"{_pct(figures['all']['chance'])} |")
    correlations = result.get("correlation_with_fp32") or {}
    if correlations:
        lines += ["", "Map agreement with the ONNX fp32 file (Pearson correlation per scan; goal for int8 files "
                  ">= 0.9): " + "; ".join(f"{name} mean {v['mean']:.3f}, lowest {v['min']:.3f} (n = {v['n']})"
                                          if v["mean"] is not None else f"{name} n/a"
                                          for name, v in correlations.items()) + "."]
    return "\n".join(lines + [""])
