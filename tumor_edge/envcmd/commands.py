"""`tumor-edge env`: paste its output into a bug report. Versions, CPU instruction sets, onnxruntime's providers
and the choice made, the extras present: everything a bug report needs, gathered without importing TensorFlow."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from tumor_edge import __version__
from tumor_edge.envcmd.extras import extras_present
from tumor_edge.machine import machine_info

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "DmlExecutionProvider", "CoreMLExecutionProvider", "OpenVINOExecutionProvider")
GPU_HINT = ("to use an NVIDIA GPU: pip uninstall -y onnxruntime && pip install onnxruntime-gpu, then "
            "`tumor-edge classify --providers CUDA,CPU ...` (or --providers auto); classify prints a note when a "
            "requested provider is missing and runs on the CPU instead")


def onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        return {"installed": False, "error": str(err)}
    available = list(ort.get_available_providers())
    accelerators = [p for p in available if p in GPU_PROVIDERS]
    return {
        "installed": True,
        "version": ort.__version__,
        "device": ort.get_device(),
        "available_providers": available,
        "default_choice": ["CPUExecutionProvider"],
        "auto_choice": accelerators + ["CPUExecutionProvider"],
        "gpu_hint": None if accelerators else GPU_HINT,
    }


def environment(model: str | None = None) -> dict[str, Any]:
    present = extras_present()
    return {"tumor_edge": __version__, "machine": machine_info(), "onnxruntime": onnxruntime_info(),
            "extras": {extra: all(mods.values()) for extra, mods in present.items()},
            "extra_modules": present, "engine_choice": engine_choice(model)}


def engine_choice(model: str | None) -> dict[str, Any]:
    """The file this device runs for the bundle (`model`, else $TUMOR_EDGE_MODEL or the last export): the choices
    recorded by measurement (tumor_edge.runtime.choice), one per thread count."""
    from tumor_edge.contracts.bundle import BundleMetadata, resolve_model_path
    from tumor_edge.errors import TumorEdgeError

    try:
        bundle = resolve_model_path(model)
        bundle = bundle if bundle.is_dir() else bundle.parent
        metadata = BundleMetadata.read(bundle)
        from tumor_edge.runtime import recorded_choices

        choices = recorded_choices(Path(bundle), metadata)
    except (TumorEdgeError, OSError) as err:
        return {"bundle": None, "note": str(err)}
    return {"bundle": str(bundle), "recorded": [asdict(c) for c in choices],
            "note": None if choices else "nothing measured yet: `tumor-edge verify BUNDLE` (or the first classify) "
                                         "times the bundle's files and records the fastest"}


def describe_choice(record: dict[str, Any]) -> list[str]:
    if not record.get("bundle"):
        return [f"engine choice   no bundle ({record.get('note')})"]
    lines = [f"engine choice   {record['bundle']}: {record['note']}"] if record.get("note") else []
    for c in record.get("recorded", []):
        threads = c["threads"] if c["threads"] is not None else "default"
        timed = ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(c["p50_ms"].items(), key=lambda kv: kv[1]))
        lines.append(f"engine choice   {c['file']} ({c['engine']}) at {threads} threads; p50 batch 1: {timed}")
    return lines


def format_text(env: dict[str, Any]) -> str:
    m = env["machine"]
    simd = [flag for flag, on in m.get("simd", {}).items() if on]
    ort = env["onnxruntime"]
    lines = [
        f"tumor-edge      {env['tumor_edge']}",
        f"python          {m.get('python')}  ({m.get('os')})",
        f"cpu             {m.get('cpu_model')}  ({m.get('usable_cpus')} usable of {m.get('logical_cpus')} "
        f"logical, {m.get('physical_cores')} physical{', virtual machine' if m.get('virtualized') else ''})",
        f"instruction set {' '.join(simd) or 'none of the tracked extensions'}",
        f"int8 speed-up   {'; '.join(m.get('int8_acceleration', []))}",
        f"memory          {m.get('memory_gib')} GiB",
        "packages        " + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items() if v),
    ]
    if ort.get("installed"):
        lines += [
            f"onnxruntime     {ort['version']} ({ort['device']}); providers: {', '.join(ort['available_providers'])}",
            f"provider choice default: {', '.join(ort['default_choice'])}; --providers auto: "
            f"{', '.join(ort['auto_choice'])}",
        ]
        if ort["gpu_hint"]:
            lines.append(f"gpu             {ort['gpu_hint']}")
    else:
        lines.append(f"onnxruntime     NOT INSTALLED ({ort['error']})")
    lines += describe_choice(env.get("engine_choice") or {})
    for extra, mods in env["extra_modules"].items():
        missing = [name for name, ok in mods.items() if not ok]
        state = "present" if not missing else f"missing {', '.join(missing)} (pip install 'tumor-edge[{extra}]')"
        lines.append(f"extra {extra:<9} {state}")
    return "\n".join(lines)


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-m", "--model", metavar="BUNDLE", default=None,
              help="Bundle whose recorded engine choice to show (default: $TUMOR_EDGE_MODEL, else the last export).")
def env(as_json: bool, model: str | None) -> None:
    """Versions, CPU instruction sets, onnxruntime providers and the choice made, extras present."""
    info = environment(model)
    click.echo(json.dumps(info, indent=2) if as_json else format_text(info))
