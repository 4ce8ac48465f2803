"""Final evaluation of a trained model on a held-out split: metrics.json and the pictures of a run (ROC curves,
confusion matrix, training curves; matplotlib, headless).

At the end of `train`, temperature scaling and the out-of-distribution score are fitted on the validation split
and measured on data they were not fitted on (the test split; generated out-of-distribution sets): the figures a
run records (RunConfig extra keys "calibration" and "ood"), a reliability diagram and the OOD parameters
(`MahalanobisOod.save`). The validation split is what model selection already used, never the test split, so the
test figures stay honest.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import fit_mahalanobis
from tumor_edge.calibration.ood_sets import OOD_SET_SIZE, generated_sets
from tumor_edge.calibration.plots import fit_calibration, pyplot
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.data.dataset import Sample, build_pixel_cache, discover, read_split
from tumor_edge.errors import ConfigError, DatasetError, ModelError, first_line
from tumor_edge.metrics import classification_metrics
from tumor_edge.modelside.cam import NoCamHeadError, features_model
from tumor_edge.outdir import prepare_out_dir
from tumor_edge.runtime import Preprocessing, flag_rates


def evaluate_samples(model, samples: Sequence[Sample], classes: Sequence[str], spec: Preprocessing,
                     out_dir: Path, batch_size: int = 32, name: str = "test",
                     cache_dir: Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Predict in file order and score, through a pixel cache file (memory does not grow with the split); writes
    the ROC and confusion PNGs and the predictions."""
    if not samples:
        raise DatasetError(f"no images to evaluate in the {name} split")
    with tempfile.TemporaryDirectory(prefix="tumor-edge-pixels-", dir=cache_dir) as tmp:
        cache = build_pixel_cache(samples, spec, Path(tmp) / f"{name}.u8", f"decoding {name} images",
                                  show_progress)
        for failure in cache.failures:
            print(f"skipped: {failure}")
        if not cache.count:
            raise DatasetError(f"no readable images in the {name} split")
        probs = predict_chunks(model, cache.chunks(), batch_size)
    labels = cache.labels
    metrics = {**classification_metrics(labels, probs, classes), "split": name, "skipped_files": cache.failures}
    run = RunFolder(out_dir)
    plot_roc(labels, probs, classes, run.roc_png, f"One-vs-rest ROC ({name}, n={len(labels)})")
    plot_confusion(metrics["confusion_matrix"], classes, run.confusion_png,
                         f"Confusion matrix ({name}, n={len(labels)})")
    np.savez_compressed(run.predictions, labels=labels, probabilities=probs,
                        files=np.array([str(s.path) for s in cache.samples]))
    return metrics


def predict_probabilities(model, pixels: np.ndarray, batch_size: int = 32, chunk: int = 256) -> np.ndarray:
    """Keras probabilities for uint8 pixels, in order (no shuffling: rows stay aligned with their labels)."""
    return predict_chunks(model, ((s, pixels[s:s + chunk]) for s in range(0, len(pixels), chunk)), batch_size)


def predict_chunks(model, chunks, batch_size: int) -> np.ndarray:
    """Probabilities for (start, uint8 images) chunks in order, e.g. `PixelCache.chunks()`: bounded memory."""
    out = [np.asarray(model.predict(batch.astype(np.float32), batch_size=batch_size, verbose=0), dtype=np.float32)
           for _, batch in chunks]
    return np.concatenate([np.zeros((0, model.output_shape[-1]), dtype=np.float32), *out])


def format_metrics(metrics: dict[str, Any]) -> str:
    auc = metrics.get("macro_auc")
    lines = [f"{metrics.get('split', 'test')}: n={metrics['n']}  accuracy={metrics['accuracy']:.4f}  "
             f"macro AUC={auc:.4f}" if auc is not None else f"accuracy={metrics['accuracy']:.4f}",
             f"{'class':<14}{'precision':>10}{'recall':>9}{'f1':>8}{'auc':>8}{'n':>6}"]
    for name, m in metrics["per_class"].items():
        a = f"{m['auc']:.3f}" if m["auc"] is not None else "-"
        lines.append(f"{name:<14}{m['precision']:>10.3f}{m['recall']:>9.3f}{m['f1']:>8.3f}{a:>8}{m['support']:>6}")
    lines.append("confusion matrix (rows true, columns predicted): " + json.dumps(metrics["confusion_matrix"]))
    return "\n".join(lines)


def load_run_model(run_dir: Path):
    import keras

    path = RunFolder(run_dir).model
    if not path.is_file():
        raise ModelError(f"no {path.name} in this run folder", run_dir)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:
        raise ModelError(f"cannot load the Keras model ({first_line(err)})", path) from err


def evaluate_run(run_dir: Path, data_root: Path | None, out_dir: Path | None, force: bool = False,
                 batch_size: int = 32) -> dict[str, Any]:
    """`tumor-edge evaluate`: the run's model on its own test split, or on the Testing/ of another folder."""
    run = RunFolder(run_dir)
    if not run.config.is_file():
        raise ModelError(f"not a tumor-edge run folder: no {run.config.name}", run.path)
    config = RunConfig.read(run.config)
    classes = config.classes
    if data_root is None:
        _, samples = read_split(run.split, "test")
        name = "test"
    else:
        index = discover(data_root)
        if index.classes != classes:
            raise DatasetError(f"classes {index.classes} differ from the model's {classes}", data_root)
        samples, name = index.test, f"Testing of {Path(data_root).name}"
    out_dir = Path(out_dir) if out_dir else run.path / ("evaluation" if data_root is None else
                                                        f"evaluation-{Path(data_root).name}")
    prepare_out_dir(out_dir, force, RunFolder.FILE_NAMES, "evaluation")
    metrics = evaluate_samples(load_run_model(run.path), samples, classes, config.preprocessing, out_dir,
                               batch_size, "test")
    metrics["split"] = name
    RunFolder(out_dir).metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """One-vs-rest ROC per class; each curve uses the probability column of its own class on aligned rows."""
    from sklearn.metrics import auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for k, name in enumerate(classes):
        positives = (np.asarray(y_true) == k).astype(int)
        if positives.min() == positives.max():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> Path:
    plt = pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), count in np.ndenumerate(m):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > m.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(plt, fig, path)


def _number(text: str | None) -> float:
    """A CSVLogger cell; Keras writes "NA" for a metric an epoch did not log (e.g. one phase without validation)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def plot_history(history_csv: Path, path: Path) -> Path | None:
    """Loss, accuracy and AUC per epoch, training against validation, from Keras' CSV log."""
    if not history_csv.is_file():
        return None
    with open(history_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = pyplot()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    metrics = [m for m in ("loss", "accuracy", "auc") if m in rows[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if key in rows[0]:
                ax.plot(epochs, [_number(r.get(key)) for r in rows], style, marker="o", ms=3,
                        label="validation" if prefix else "training")
        ax.set(title=metric, xlabel="epoch")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def fit_ood(model, val_pixels: np.ndarray, val_labels: np.ndarray, test_pixels: np.ndarray | None,
            params_path: Path, batch_size: int = 32) -> dict[str, Any]:
    """Mahalanobis on pooled features (fitted on validation, saved to `params_path`), measured on the test
    split (false alarms) and on generated sets (detection), beside the input checks' rates on the same sets."""
    try:
        features = features_model(model)
        fit = fit_mahalanobis(predict_probabilities(features, val_pixels, batch_size), val_labels)
    except (NoCamHeadError, ConfigError) as err:  # no pooled features to fit on; too few images to fit
        return {"score": None, "skipped": err.reason}
    fit.save(params_path)
    record = fit.summary()
    record.pop("centres")  # the bundle carries them; the run keeps them in the saved parameters
    record["parameters"] = Path(params_path).name
    size = tuple(val_pixels.shape[1:3])
    sets = {"test split (in distribution)": test_pixels} if test_pixels is not None and len(test_pixels) else {}
    sets.update(generated_sets(OOD_SET_SIZE, size, scans=test_pixels))
    record["evaluation"] = {name: flag_rates(fit.flags(predict_probabilities(features, pixels, batch_size)), pixels)
                            for name, pixels in sets.items()}
    return record


def fit_trust_for_run(model, val_pixels: np.ndarray, val_labels: np.ndarray, test_pixels: np.ndarray,
                      test_labels: np.ndarray, reliability_png: Path, ood_params: Path,
                      batch_size: int = 32) -> dict[str, Any]:
    """Both fits for a finished run: {"calibration": ..., "ood": ...} for metrics.json and the run config.
    A run without a usable validation split records why nothing was fitted instead of failing the run."""
    if len(val_labels) < 20:
        why = f"{len(val_labels)} validation images; at least 20 are needed"
        return {"calibration": {"method": None, "skipped": why}, "ood": {"score": None, "skipped": why}}
    val_probs = predict_probabilities(model, val_pixels, batch_size)
    test_probs = predict_probabilities(model, test_pixels, batch_size) if len(test_labels) else None
    calibration = fit_calibration(val_probs, val_labels, test_probs, test_labels, reliability_png)
    ood = fit_ood(model, val_pixels, val_labels, test_pixels, ood_params, batch_size)
    return {"calibration": calibration, "ood": ood}


def describe_trust(record: dict[str, Any]) -> str:
    """Two lines for train's printout."""
    cal, ood = record.get("calibration") or {}, record.get("ood") or {}
    lines = []
    if cal.get("kept_t1_because"):
        lines.append(f"calibration: T = 1 kept (fitted T = {cal['fitted_temperature']:.3g}: "
                     f"{cal['kept_t1_because']}); ECE on {cal['ece_measured_on']} {100 * cal['ece_before']:.1f} %")
    elif cal.get("temperature") is not None:
        lines.append(f"calibration: T = {cal['temperature']:.3g}; ECE on {cal['ece_measured_on']} "
                     f"{100 * cal['ece_before']:.1f} % -> {100 * cal['ece_after']:.1f} %")
    else:
        lines.append(f"calibration: not fitted ({cal.get('skipped', 'no figures')})")
    if ood.get("score"):
        ev = ood.get("evaluation", {})
        rates = ", ".join(f"{name} {100 * r['either_flagged']:.0f} %" for name, r in ev.items())
        lines.append(f"out-of-distribution: {ood['score']} threshold {ood['threshold']:.3g} (passes "
                     f"{100 * ood['tpr']:.0f} % of validation scans); flagged: {rates}")
    else:
        lines.append(f"out-of-distribution: no feature-space check ({ood.get('skipped', 'no figures')})")
    return "\n".join(lines)
