"""The optional extras and the modules each brings: one table for `tumor-edge env`, the CLI's missing-extra
message and the test that declared dependencies match imports. Imports nothing heavy."""

from __future__ import annotations

import importlib.util

# extra -> the top-level modules it provides (import names, not distribution names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("tensorflow", "keras", "tf2onnx", "onnx", "sklearn", "matplotlib", "nibabel", "nilearn", "scipy",
              "sympy"),
    "tflite": ("ai_edge_litert",),
    "dicom": ("pydicom",),
    "serve": ("starlette", "uvicorn", "python_multipart"),
    "nifti": ("nibabel",),
}

# command -> the extra it needs beyond the runtime install (commands not listed need none)
COMMAND_EXTRAS: dict[str, str] = {
    "train": "train", "evaluate": "train", "export": "train", "demo": "train", "demo-data": "train",
    "serve": "serve",
}


def extra_for(module: str | None, command: str | None = None) -> str | None:
    """The extra that provides top-level `module` (the command's own extra first), None if no extra does."""
    top = (module or "").split(".")[0]
    own = COMMAND_EXTRAS.get(command or "")
    if own and top in EXTRAS[own]:
        return own
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def installed(module: str) -> bool:
    """Whether `module` can be imported (found, not imported: `env` must not pay for TensorFlow's start)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def extras_present() -> dict[str, dict[str, bool]]:
    """extra -> {module: installed}."""
    return {extra: {m: installed(m) for m in modules} for extra, modules in EXTRAS.items()}
