"""MODEL_CARD.md for a bundle, written from its metadata (and the parity report when there is one).

Layout after Hugging Face's model card (YAML front matter: license, tags, pipeline_tag, model-index; then
"Uses", "Bias, Risks, and Limitations", "Training Details", "Evaluation", ...) with field names from MONAI's
bundle metadata where they fit (task, intended_use, image_classes / pred_classes, data_source). Every number
is copied from metadata.json or parity.json, never computed here, so the card cannot drift from the bundle;
what a bundle does not record is said to be "not recorded". TensorFlow-free: `verify` or a device can
regenerate the card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.contracts.bundle import MODEL_CARD, RELIABILITY_PNG
from tumor_edge.export.parity_stats import wilson_interval

NOT_RECORDED = "not recorded"
SECTIONS = ("Intended use", "Model details", "Classes", "Training data", "Evaluation", "Calibration",
            "Exported files and parity", "Heatmaps", "Out-of-distribution behaviour", "Limitations", "Provenance")


def _num(value: Any, spec: str = ".4f") -> str:
    return NOT_RECORDED if not isinstance(value, (int, float)) or isinstance(value, bool) else format(value, spec)


def _pct(value: Any) -> str:
    return NOT_RECORDED if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def wilson(p: float, n: int) -> tuple[float, float]:
    """95 % Wilson interval of an accuracy `p` over `n` images (export.parity_stats's, from the count)."""
    return wilson_interval(round(p * n), n)


def _acc_with_ci(acc: Any, n: Any) -> str:
    if not isinstance(acc, (int, float)) or not isinstance(n, int) or n <= 0:
        return _num(acc)
    lo, hi = wilson(float(acc), n)
    return f"{acc:.4f} (95 % CI {lo:.4f}–{hi:.4f}, n = {n})"


def _front_matter(meta: Mapping[str, Any], parity: Mapping[str, Any]) -> list[str]:
    keras = parity.get("keras") or {}
    lines = ["---", "license: apache-2.0", "library_name: tumor-edge", "pipeline_tag: image-classification",
             "tags:", "  - medical-imaging", "  - brain-mri", "  - research-only", "  - onnx", "  - tflite"]
    if isinstance(keras.get("accuracy"), (int, float)):
        lines += ["model-index:", f"  - name: {json.dumps(meta.get('name', 'tumor-edge model'))}", "    results:",
                  "      - task: {type: image-classification}",
                  f"        dataset: {{name: {json.dumps(str(parity.get('test_data', 'test split')))}, "
                  "type: image-folder}", "        metrics:",
                  f"          - {{type: accuracy, value: {keras['accuracy']:.4f}}}"]
        if isinstance(keras.get("macro_auc"), (int, float)):
            lines.append(f"          - {{type: roc_auc, name: macro one-vs-rest AUC, value: {keras['macro_auc']:.4f}}}")
    return lines + ["---", ""]


def render_model_card(meta: Mapping[str, Any], parity: Mapping[str, Any] | None = None) -> str:
    """The card as Markdown. `meta`: metadata.json as a dict; `parity`: parity.json (else metadata's summary)."""
    metrics = meta.get("metrics") or {}
    parity = parity or metrics.get("parity") or {}
    provenance = meta.get("provenance") or {}
    classes = list(meta.get("classes") or [])
    out = _front_matter(meta, parity)
    out += [f"# Model card: {meta.get('name', 'tumor-edge model')}", "",
            "## Intended use", "", f"**{meta.get('intended_use') or RESEARCH_NOTICE}**", "",
            "Research on classifying single brain MRI slices on CPUs and edge devices. Out of scope: any clinical "
            "or diagnostic use, screening, triage, and images other than brain MRI slices.", ""]
    spec = meta.get("preprocessing") or {}
    out += ["## Model details", "", f"- Task: {meta.get('task', NOT_RECORDED)}",
            f"- Input: {spec.get('height', '?')}x{spec.get('width', '?')} RGB; {spec.get('description', '')}",
            f"- Output roles: {', '.join((meta.get('outputs') or {'scores': {}}).keys())}",
            f"- Schema version: {meta.get('schema_version', 1)}", ""]
    out += ["## Classes", "", "| index | class (`image_classes` / `pred_classes`) |", "|---|---|"]
    out += [f"| {i} | {name} |" for i, name in enumerate(classes)] + [""]
    counts = provenance.get("counts") or {}
    fingerprint = provenance.get("data_fingerprint") or NOT_RECORDED
    out += ["## Training data", "", f"- Data fingerprint (`data_source`): {fingerprint}",
            f"- Data root: {provenance.get('data_root') or NOT_RECORDED}",
            f"- Image counts: {json.dumps(counts) if counts else NOT_RECORDED}", ""]
    out += _evaluation(parity)
    out += _calibration(meta.get("calibration") or metrics.get("calibration"))
    out += _calibration_per_file(parity)
    out += _parity_files(parity)
    out += _heatmaps(meta, metrics)
    out += _ood(meta.get("ood") or metrics.get("ood"))
    out += ["## Limitations", "",
            "- Trained and evaluated on the data named above only; accuracy on other scanners, sequences, "
            "patients or institutions is unknown.",
            "- The public Brain Tumor MRI Dataset holds near-duplicates across its train and test folders, which "
            "inflates accuracies measured on it; synthetic demo data says nothing about real scans.",
            "- One 2-D slice per prediction; no 3-D context, no clinical information.",
            "- Out-of-distribution checks lower, not remove, the risk of a confident answer to an unsuitable image.",
            ""]
    out += ["## Provenance", ""]
    for key in ("tumor_edge_version", "exported", "trained", "run_dir", "parity"):
        out.append(f"- {key}: {provenance.get(key, NOT_RECORDED)}")
    source = provenance.get("source") or {}
    if source:
        out.append(f"- source: {source.get('kind', '?')} {source.get('path', '')} (sha256 {source.get('sha256', '?')})")
    versions = provenance.get("versions") or {}
    if versions:
        out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v))
    out += ["", f"_{RESEARCH_NOTICE}_", ""]
    return "\n".join(out)


def _evaluation(parity: Mapping[str, Any]) -> list[str]:
    keras = parity.get("keras") or {}
    n = parity.get("n_images")
    return ["## Evaluation", "", f"Test data: {parity.get('test_data', NOT_RECORDED)} ({n if n else '?'} images).",
            "", f"- Accuracy (Keras model): {_acc_with_ci(keras.get('accuracy'), n)}",
            f"- Macro one-vs-rest AUC: {_num(keras.get('macro_auc'))}", ""]


def _calibration(cal: Mapping[str, Any] | None) -> list[str]:
    if not cal or cal.get("temperature") is None:
        why = f" ({cal['skipped']})" if cal and cal.get("skipped") else ""
        return ["## Calibration", "", f"Temperature scaling: {NOT_RECORDED}{why}.", ""]
    return ["## Calibration", "",
            f"{cal.get('method', 'temperature scaling')} fitted on {cal.get('fitted_on', '?')} validation images: "
            f"T = {_num(cal.get('temperature'), '.4g')}; the runtime divides log-probabilities by T.", "",
            "| | expected calibration error ({} bins) | negative log-likelihood |".format(cal.get("bins", 15)),
            "|---|---|---|",
            f"| before | {_pct(cal.get('ece_before'))} | {_num(cal.get('nll_before'))} |",
            f"| after | {_pct(cal.get('ece_after'))} | {_num(cal.get('nll_after'))} |", ""]


def _calibration_per_file(parity: Mapping[str, Any]) -> list[str]:
    """ECE of every exported file (and Keras) on the parity test images, before and after the bundle's T."""
    rows = [("keras", (parity.get("keras") or {}).get("calibration"))]
    rows += [(name, f.get("calibration")) for name, f in (parity.get("files") or {}).items()]
    rows = [(name, c) for name, c in rows if isinstance(c, Mapping) and "ece_before" in c]
    if not rows:
        return []
    out = [f"Per exported file, on the {parity.get('n_images', '?')} parity test images (reliability diagrams: "
           f"`{RELIABILITY_PNG}`):", "", "| file | ECE before scaling | ECE after scaling |", "|---|---|---|"]
    out += [f"| {name} | {_pct(c.get('ece_before'))} | {_pct(c.get('ece_after'))} |" for name, c in rows]
    return out + [""]


def _parity_files(parity: Mapping[str, Any]) -> list[str]:
    files = parity.get("files") or {}
    out = ["## Exported files and parity", ""]
    if not files:
        return out + [f"Parity: {NOT_RECORDED}.", ""]
    n = parity.get("n_images")
    out += [f"Overall verdict: **{parity.get('verdict', 'pass' if parity.get('passed') else NOT_RECORDED)}**", "",
            "| file | accuracy (95 % CI) | macro AUC | Δ accuracy (points) | Δ AUC | agreement | verdict |",
            "|---|---|---|---|---|---|---|"]
    for name, f in files.items():
        out.append(f"| {name} | {_acc_with_ci(f.get('accuracy'), n)} | {_num(f.get('macro_auc'))} | "
                   f"{_num(f.get('delta_accuracy_points'), '+.2f')} | {_num(f.get('delta_auc'), '+.4f')} | "
                   f"{_num(f.get('agreement'))} | {f.get('verdict', 'pass' if f.get('passed') else '?')} |")
    return out + [""]


def _heatmaps(meta: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    outputs = meta.get("outputs") or {}
    if "heatmap" not in outputs:
        return ["## Heatmaps", "", "This bundle's models give no heatmap output.", ""]
    out = ["## Heatmaps", "", f"Output `heatmap`: {outputs['heatmap'].get('description', '')}.", ""]
    hp = metrics.get("heatmap_parity") or {}
    if hp:
        out += ["| file | mean correlation with Keras' maps |", "|---|---|"]
        out += [f"| {name} | {'not measurable (every map is one cell)' if value is None else _num(value)} |"
                for name, value in hp.items()]
    else:
        out.append(f"Heatmap parity: {NOT_RECORDED}.")
    return out + [""]


def _ood(ood: Mapping[str, Any] | None) -> list[str]:
    out = ["## Out-of-distribution behaviour", "",
           "Input checks on every image: colour, noise, blank or constant, no dark background (each gives a "
           "warning)."]
    if not ood:
        return out + [f"Feature-space check: {NOT_RECORDED}.", ""]
    fitted = (f"threshold {_num(ood.get('threshold'), '.4g')} fitted on {ood.get('count', '?')} "
              f"{'held-back calibration' if ood.get('output_role') == 'ood_score' else 'validation'} images to pass "
              f"{_pct(ood.get('tpr'))} of them")
    if ood.get("output_role") == "ood_score":  # a score the model computes from its class scores (foreign models)
        out += ["", f"Output-score check (the model exposes no pooled features): {ood.get('description', '?')}; "
                f"{fitted} (measured: {_pct(ood.get('measured_tpr'))})."]
    else:
        out += ["", f"Feature-space check: {ood.get('score', '?')} distance on the model's pooled features, {fitted} "
                f"(out-of-fold: {_pct(ood.get('measured_tpr'))})."]
    rates = ood.get("evaluation") or {}
    if rates:
        when = "at export" if ood.get("output_role") == "ood_score" else "at the end of training"
        out += ["", f"Measured {when} (generated sets are synthetic; the in-distribution row is "
                "the false-alarm rate):", "",
                "| set | images | feature check | input checks | either |", "|---|---|---|---|---|"]
        out += [f"| {name} | {r.get('count', '?')} | {_pct(r.get('flagged'))} | {_pct(r.get('input_checks_flagged'))}"
                f" | {_pct(r.get('either_flagged'))} |" for name, r in rates.items()]
    return out + [""]


def write_model_card(bundle_dir: Path, meta: Mapping[str, Any], parity: Mapping[str, Any] | None = None) -> Path:
    path = Path(bundle_dir) / MODEL_CARD
    path.write_text(render_model_card(meta, parity), encoding="utf-8")
    return path
