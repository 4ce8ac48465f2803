"""`tumor-edge demo`: demo data -> train -> export (int8 too) -> classify held-out scans -> benchmark -> summary.

Each complete stage leaves a marker (`.stages/<stage>.json`) with its parameters and results, so a rerun resumes
where it stopped; a stage that runs again invalidates the stages after it. What the stages have produced so far
is plain data (`DemoContext.results`) that the closing summary reads.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from tumor_edge.contracts.bundle import METADATA_FILE
from tumor_edge.contracts.formats import engine_for_suffix
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.errors import OutputExistsError, TumorEdgeError
from tumor_edge.worker import run_elsewhere


@dataclass(frozen=True)
class DemoProfile:
    """Sizes chosen for the hardware."""

    name: str
    per_class: int  # demo images per class (Training + Testing)
    data_size: int  # demo image edge, px
    image_size: int  # model input, px
    epochs: int
    batch_size: int
    bn_momentum: float
    learning_rate: float
    bench_seconds: float
    augment: bool = False  # the demo data already varies rotation, scale, shift, flips and contrast per image
    patience: int = 3  # epochs without a better val accuracy before stopping; the LR drops after half of it
    lr_schedule: str = "plateau"  # train's --lr-schedule

    def describe(self) -> str:
        return (f"profile {self.name}: {self.per_class} images/class, InceptionV3 from scratch at "
                f"{self.image_size} px, {self.epochs} epochs, batch {self.batch_size}")


# name -> profile (`auto` picks "gpu" when the NVIDIA driver lists a GPU). The cpu profile fits in a few minutes on
# two cores without AVX-512: batch 32 (fewer, fuller steps), six epochs and a cosine rate that ends settled.
PROFILES: dict[str, DemoProfile] = {
    "cpu": DemoProfile("cpu", per_class=500, data_size=128, image_size=96, epochs=6, batch_size=32,
                       bn_momentum=0.9, learning_rate=2e-3, bench_seconds=1.0, patience=6, lr_schedule="cosine"),
    "gpu": DemoProfile("gpu", per_class=1000, data_size=256, image_size=224, epochs=20, batch_size=32,
                       bn_momentum=0.95, learning_rate=1e-3, bench_seconds=2.0),
}


@dataclass
class DemoConfig:
    workdir: Path = Path("demo-workdir")
    profile: str = "auto"
    seed: int = 0
    force: bool = False  # rerun every stage, even complete ones
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.profile != "auto" and self.profile not in PROFILES:
            raise TumorEdgeError(f"unknown demo profile {self.profile!r}; choose auto, {', '.join(PROFILES)}")


@dataclass
class DemoContext:
    config: DemoConfig
    profile: DemoProfile
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def bundle(self) -> Path:
        return self.workdir / "bundle"


STAGE_DIR = ".stages"
EXPLAIN_PER_CLASS = 8  # held-out tumour scans per class whose maps are checked against their lesion


def _say(message: str) -> None:
    click.echo(message, err=True)


def _gpu_count() -> int:
    """NVIDIA GPUs the driver lists, without importing TensorFlow in this process."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 0


def stage_data(ctx: DemoContext) -> dict[str, Any]:
    from tumor_edge.demo.generate import DemoDataConfig, generate, is_demo_dataset

    if ctx.data.exists() and any(ctx.data.iterdir()) and not is_demo_dataset(ctx.data):
        raise OutputExistsError("holds something other than demo data; choose another --workdir", ctx.data)
    p = ctx.profile
    config = DemoDataConfig(out=ctx.data, per_class=p.per_class, size=p.data_size, seed=ctx.config.seed,
                            force=True, show_progress=ctx.config.show_progress)
    plan = generate(config)
    n_train, n_test = config.counts
    held = (f"a volume Training never saw ({plan.test_source.name})" if plan.test_source is not None
            else "a slab of slice positions Training never saw (only one volume installed)")
    return {"path": str(ctx.data), "train_per_class": n_train, "test_per_class": n_test,
            "volumes": [s.name for s in plan.sources], "held_out": held}


def stage_train(ctx: DemoContext) -> dict[str, Any]:
    from tumor_edge.train.fit import AugmentConfig, TrainConfig, run_training

    p = ctx.profile
    run = run_training(TrainConfig(
        data=ctx.data, out=ctx.run, image_size=p.image_size, weights="none", epochs=p.epochs,
        batch_size=p.batch_size, learning_rate=p.learning_rate, bn_momentum=p.bn_momentum,
        monitor="val_accuracy", patience=p.patience, lr_schedule=p.lr_schedule, seed=ctx.config.seed, force=True,
        augment=AugmentConfig(enabled=p.augment), verbose=1 if sys.stdout.isatty() else 2,
        show_progress=ctx.config.show_progress))
    metrics = RunFolder(run).read_metrics()
    return {"path": str(run), "accuracy": metrics["accuracy"], "macro_auc": metrics.get("macro_auc"),
            "n_test": metrics.get("n"), "per_class": {k: v.get("recall") for k, v in metrics["per_class"].items()}}


def stage_export(ctx: DemoContext) -> dict[str, Any]:
    from tumor_edge.errors import ParityError
    from tumor_edge.export.exporter import ExportConfig, export_bundle

    # A demo's held-out split may be too small to prove the tolerances: "not proven" is reported, not a failure.
    # overlap: ONNX int8 quantizes beside the TFLite conversions instead of after them; the demo's model is small
    # enough that both fit beside each other below training's peak.
    config = ExportConfig(source=ctx.run, out=ctx.bundle, int8=True, force=True, allow_unproven=True, overlap=True,
                          show_progress=ctx.config.show_progress)
    try:
        result = export_bundle(config)
        verdict = result.parity.verdict if result.parity is not None else "not checked"
        verdicts = {f.file: f.verdict for f in result.parity.files} if result.parity is not None else {}
        table, passed, failure = result.table, True, None
    except ParityError as err:  # the files are kept; the demo reports the failure and goes on
        table, passed, failure, verdict, verdicts = getattr(err, "table", ""), False, str(err), "fail", {}
    click.echo(table)
    files = sorted(p.name for p in ctx.bundle.iterdir() if engine_for_suffix(p.suffix) is not None)
    return {"path": str(ctx.bundle), "table": table, "parity_passed": passed, "parity_verdict": verdict,
            "parity_failure": failure, "parity_files": verdicts, "files": files}


def _held_out_examples(ctx: DemoContext) -> list[tuple[Path, str]]:
    from tumor_edge.data.dataset import discover

    index = discover(ctx.data)
    return [(s.path, name) for label, name in enumerate(index.classes)
            for s in [s for s in index.test if s.label == label][:2]]


def stage_classify(ctx: DemoContext) -> dict[str, Any]:
    from tumor_edge.runtime import Classifier

    classifier = Classifier.from_bundle(ctx.bundle)
    rows = []
    for path, truth in _held_out_examples(ctx):
        pred = classifier.predict(path)
        rows.append({"file": str(path.relative_to(ctx.data)), "true": truth, "predicted": pred.label,
                     "confidence": round(pred.confidence, 3)})
    lines = [f"classified {len(rows)} held-out scans with {classifier.model_path.name} (runtime, no TensorFlow):"]
    lines += [f"  {r['file']:<38} true {r['true']:<11} predicted {r['predicted']:<11} {r['confidence']:.2f}"
              + ("" if r["true"] == r["predicted"] else "  <- wrong") for r in rows]
    click.echo("\n".join(lines))
    (ctx.workdir / "classify.json").write_text(json.dumps(rows, indent=1) + "\n")
    return {"model": classifier.model_path.name, "rows": rows,
            "correct": sum(r["true"] == r["predicted"] for r in rows)}


def stage_bench(ctx: DemoContext) -> dict[str, Any]:
    from tumor_edge.bench.harness import BenchConfig, RunPlan, run_bench
    from tumor_edge.bench.report import render_markdown, render_text

    record = run_bench(BenchConfig(
        model=ctx.bundle, threads=[2], batches=[1], plan=RunPlan(2, 10, ctx.profile.bench_seconds),
        images=ctx.data / "Testing", image_count=8, keras=False, cold_start=False, ceiling=False,
        show_progress=ctx.config.show_progress))
    click.echo(render_text(record))
    (ctx.workdir / "bench.json").write_text(json.dumps(record, indent=1) + "\n")
    (ctx.workdir / "bench.md").write_text(render_markdown(record, None))
    latency = {row["format"]: {"p50_ms": row["p50_ms"], "p90_ms": row["p90_ms"]} for row in record["results"]}
    return {"path": str(ctx.workdir / "bench.json"), "latency": latency,
            "cpu": record.get("machine", {}).get("cpu_model")}


def stage_trust(ctx: DemoContext) -> dict[str, Any]:
    """Calibration, one heatmap per class and OOD figures for the summary."""
    from tumor_edge.demo.trust_summary import trust_summary

    return trust_summary(ctx.run, ctx.bundle, ctx.data / "Testing", ctx.workdir / "trust",
                         link_base=ctx.workdir, seed=ctx.config.seed)


def stage_explain(ctx: DemoContext) -> dict[str, Any]:
    """Pointing game and energy in the lesion per file and class."""
    from tumor_edge.demo.localisation import LocalisationConfig, localisation_markdown, measure_localisation

    result = measure_localisation(ctx.run, ctx.bundle, ctx.data,
                                  LocalisationConfig(per_class=EXPLAIN_PER_CLASS))
    result["markdown"] = localisation_markdown(result)
    click.echo(result["markdown"])
    (ctx.workdir / "localisation.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    run: Callable[[DemoContext], dict[str, Any]]
    outputs: Callable[[DemoContext], list[Path]]  # must exist for a marker to count
    isolated: bool = False  # runs in a child process (tumor_edge.worker): what it allocates is freed


STAGES: list[Stage] = [
    Stage("data", "generating synthetic demo data", stage_data, lambda c: [c.data / "DATASET.md"], isolated=True),
    Stage("train", "training InceptionV3 from scratch", stage_train,
          lambda c: [RunFolder(c.run).model, RunFolder(c.run).metrics], isolated=True),
    Stage("export", "exporting ONNX and TFLite (fp32, int8) with parity", stage_export,
          lambda c: [c.bundle / METADATA_FILE], isolated=True),
    Stage("classify", "classifying held-out scans with the runtime", stage_classify,
          lambda c: [c.workdir / "classify.json"]),
    Stage("trust", "measuring calibration, heatmaps and out-of-distribution warnings", stage_trust,
          lambda c: [c.workdir / "trust" / "ood.png"]),
    Stage("explain", "measuring where the maps point (pointing game, energy in the lesion)", stage_explain,
          lambda c: [c.workdir / "localisation.json"], isolated=True),
    Stage("bench", "benchmarking latency", stage_bench, lambda c: [c.workdir / "bench.json"]),
]


def _params(ctx: DemoContext) -> dict[str, Any]:
    return {"profile": asdict(ctx.profile), "seed": ctx.config.seed}


def _marker(ctx: DemoContext, stage: Stage) -> Path:
    return ctx.workdir / STAGE_DIR / f"{stage.name}.json"


def _complete(ctx: DemoContext, stage: Stage) -> dict[str, Any] | None:
    """The stage's recorded result when its marker matches these parameters and its outputs exist."""
    try:
        marker = json.loads(_marker(ctx, stage).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("params") != _params(ctx) or not all(p.exists() for p in stage.outputs(ctx)):
        return None
    ctx.timings[stage.name] = marker.get("seconds", 0.0)
    return marker.get("result")


def _check_workdir(workdir: Path) -> None:
    """The work folder is the demo's: refuse a non-empty folder the demo did not make."""
    if workdir.exists() and not workdir.is_dir():
        raise OutputExistsError("exists and is not a folder", workdir)
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / STAGE_DIR).is_dir():
        raise OutputExistsError("folder exists and was not made by `tumor-edge demo`; choose another --workdir",
                                workdir)


def run_demo(config: DemoConfig) -> DemoContext:
    """Run (or resume) every stage, then write and print the summary."""
    started = time.perf_counter()
    _check_workdir(config.workdir)
    profile = PROFILES[config.profile if config.profile != "auto" else "gpu" if _gpu_count() else "cpu"]
    ctx = DemoContext(config, profile)
    (ctx.workdir / STAGE_DIR).mkdir(parents=True, exist_ok=True)
    _say(f"tumor-edge demo in {ctx.workdir} ({profile.describe()}). SYNTHETIC data: a pipeline demo, not a "
         "diagnostic model.")
    rerun = config.force
    for number, stage in enumerate(STAGES, 1):
        result = None if rerun else _complete(ctx, stage)
        if result is not None:
            ctx.results[stage.name] = result
            ctx.skipped.append(stage.name)
            _say(f"[{number}/{len(STAGES)}] {stage.title}: already complete, reusing {stage.outputs(ctx)[0]}")
            continue
        rerun = True  # every later stage depends on this one's output
        _marker(ctx, stage).unlink(missing_ok=True)
        _say(f"[{number}/{len(STAGES)}] {stage.title} ...")
        t0 = time.perf_counter()
        result = run_elsewhere(stage.run, ctx, name=f"demo stage {stage.name}") if stage.isolated else stage.run(ctx)
        ctx.timings[stage.name] = round(time.perf_counter() - t0, 1)
        ctx.results[stage.name] = result
        _marker(ctx, stage).write_text(json.dumps(
            {"params": _params(ctx), "seconds": ctx.timings[stage.name], "result": result}, indent=1) + "\n")
    ctx.timings["this invocation"] = round(time.perf_counter() - started, 1)
    text = render_summary(ctx)
    (ctx.workdir / "SUMMARY.md").write_text(text)
    click.echo("\n" + text)
    return ctx


# ---- the closing summary (also written to WORKDIR/SUMMARY.md) ----------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def render_summary(ctx: DemoContext) -> str:
    r = ctx.results
    data, train, export = r.get("data", {}), r.get("train", {}), r.get("export", {})
    classify, bench = r.get("classify", {}), r.get("bench", {})
    total = sum(v for k, v in ctx.timings.items() if k != "this invocation")
    lines = [
        "# tumor-edge demo: summary",
        "",
        "**SYNTHETIC DATA.** These figures come from slices of real MRI templates with simulated tumours, made "
        "by `tumor-edge demo-data`. They show that the pipeline works end to end; they say nothing about how a "
        "model does on patients. The real thing: `tumor-edge train PATH` on a real dataset folder "
        "(`PATH/Training/<class>/`, `PATH/Testing/<class>/`). Research tool, not a diagnostic device.",
        "",
        f"{ctx.profile.describe()}; stages took {_minutes(total)} in all"
        + (f" (reused: {', '.join(ctx.skipped)})" if ctx.skipped else "") + ".",
        "",
        "## Where everything is",
        f"- demo data: `{data.get('path')}` ({data.get('train_per_class')} Training + "
        f"{data.get('test_per_class')} Testing images per class; Testing from {data.get('held_out')}; "
        "see its DATASET.md)",
        f"- training run: `{train.get('path')}` (the model, its metrics, history and ROC/confusion/curve PNGs)",
        f"- model bundle: `{export.get('path')}` ({', '.join(export.get('files', []))}, metadata.json, "
        "parity.md)",
        f"- held-out classifications: `{ctx.workdir / 'classify.json'}`; latency: `{bench.get('path')}` and "
        "bench.md",
        "",
        "## Test accuracy (held-out anatomy, Keras model)",
        f"accuracy {_pct(train.get('accuracy'))}, macro one-vs-rest AUC "
        f"{'n/a' if train.get('macro_auc') is None else format(train['macro_auc'], '.3f')} on "
        f"{train.get('n_test')} test scans; recall per class: "
        + ", ".join(f"{k} {_pct(v)}" for k, v in train.get("per_class", {}).items()),
        "",
        "## Parity of the exported files (through the runtime, on the test split)",
        parity_headline(export),
        "",
        "```",
        (export.get("table") or "(no table)").rstrip(),
        "```",
        "",
        "## Latency per format (batch 1, 2 threads)",
    ]
    latency = bench.get("latency", {})
    if latency:
        lines += ["| format | p50 ms | p90 ms |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} |" for k, v in latency.items()]
        if bench.get("cpu"):
            lines.append(f"\non {bench['cpu']}")
    else:
        lines.append("(no latency figures)")
    rows = classify.get("rows", [])
    lines += ["", f"## Held-out scans classified with {classify.get('model')} "
                  f"({classify.get('correct', 0)}/{len(rows)} correct)"]
    lines += [f"- `{row['file']}`: true {row['true']}, predicted {row['predicted']} ({row['confidence']:.2f})"
              for row in rows]
    for section in ("trust", "explain"):
        markdown = r.get(section, {}).get("markdown")
        if markdown:
            lines += ["", markdown.rstrip()]
    lines += ["", "## Stage times", *[f"- {k}: {_minutes(v)}" for k, v in ctx.timings.items()], "",
              "Next: `tumor-edge classify SCAN.jpg` uses this bundle; `tumor-edge bench --model "
              f"{export.get('path')}` times it fully; `tumor-edge train PATH` trains on real data.", ""]
    return "\n".join(lines)


def parity_headline(export: dict[str, Any]) -> str:
    """Each file's verdict, never "passed" above rows that read "not proven"."""
    if not export.get("parity_passed"):
        return f"FAILED: {export.get('parity_failure')}"
    verdicts: dict[str, str] = export.get("parity_files") or {}
    if not verdicts:
        return f"parity verdict: {export.get('parity_verdict', 'not checked')}"
    groups: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        groups.setdefault(verdict, []).append(name)
    parts = [f"{len(names)} {v} ({', '.join(f'`{n}`' for n in sorted(names))})"
             for v, names in sorted(groups.items(), key=lambda kv: ("pass", "not proven", "fail").index(kv[0])
                                    if kv[0] in ("pass", "not proven", "fail") else 3)]
    line = "Per file: " + "; ".join(parts) + "."
    if "not proven" in groups:
        line += (" Not proven: the test split is too small to show the tolerances hold (nor that they fail); "
                 "parity.md says how many test images would.")
    return line
