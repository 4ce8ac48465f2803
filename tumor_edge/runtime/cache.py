"""The device's cache of optimised models: built at a model's first use, reused from the second run on.

Bundles hold models only, never files made for one machine (0.1.0 shipped an `*.ort.onnx` twin per ONNX file,
doubling the bundle and useless on any other CPU; and a twin's own record was all that vouched for it, so any
model dropped into a bundle under that name ran: the runtime no longer looks for one). Instead each device saves
onnxruntime's optimised graph the first time it loads a model and later loads that, skipping the optimisation
(the cold-start lever: -75 ms for InceptionV3 int8). Entries live in this per-user folder, never inside a bundle
(a cache pointed into one is not used), and are keyed by what the optimised graph depends on: the source model's
identity (its sha256, and its external data files' when it has any) and the machine target (onnxruntime version,
CPU architecture, ISA), so a changed model, an upgraded onnxruntime or a moved disk never loads a wrong entry.
Each entry is a folder: the optimised graph (`model.onnx`, with the record this runtime wrote when it made it:
the source's identity, the machine, and the CRC32/sha256 of the graph and its weights, see
tumor_edge.runtime.backends.optimized) and its initializers (`weights.bin`), which onnxruntime maps instead of
copying (lower peak memory at load).

Where: `$TUMOR_EDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/tumor-edge`, else `~/.cache/tumor-edge`. Off with
`TUMOR_EDGE_NO_CACHE=1` or `BackendOptions(cache=False)`. Entries are written atomically (temp file + rename), so
concurrent first runs and a crash mid-write leave no half file; every problem (unwritable folder, full disk, a
damaged entry) only costs the speed-up: it is logged and the plain model runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.contracts.bundle import METADATA_FILE
from tumor_edge.runtime.backends.options import BackendOptions, machine_target

CACHE_DIR_ENV = "TUMOR_EDGE_CACHE_DIR"
NO_CACHE_ENV = "TUMOR_EDGE_NO_CACHE"
APP_DIR = "tumor-edge"


def cache_enabled(options: BackendOptions) -> bool:
    return options.cache and os.environ.get(NO_CACHE_ENV, "") in ("", "0")


def cache_root(options: BackendOptions | None = None) -> Path:
    """The folder holding this user's cached optimised models."""
    if options is not None and options.cache_dir:
        return Path(options.cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / APP_DIR


def target_folder_name(target: dict[str, str] | None = None) -> str:
    """One folder per machine target: 'onnxruntime-1.32.0-x86_64-avx512_vnni'."""
    t = target or machine_target()
    safe = "-".join(str(t.get(k, "unknown")) for k in ("onnxruntime", "machine", "isa"))
    return "onnxruntime-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in safe)


ENTRY_MODEL = "model.onnx"


def entry_path(source_sha256: str, options: BackendOptions | None = None) -> Path:
    """The optimised form of the model whose sha256 is `source_sha256`, on this machine: one folder per entry,
    `<root>/<target>/<sha256>/model.onnx` with its initializers in `weights.bin` beside it."""
    return cache_root(options) / target_folder_name() / source_sha256 / ENTRY_MODEL


def inside_bundle(path: Path, model: Path) -> bool:
    """Whether `path` lies in the bundle folder holding `model` (a folder with a metadata.json; both resolved, so a
    link cannot hide it). The cache is refused there: what lies in a bundle is only what its metadata lists."""
    folder = Path(model).parent
    if not (folder / METADATA_FILE).exists():
        return False
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop: treat as inside, the plain model runs
        return True


def prepare_folder(path: Path) -> Path:
    """Create the folder that holds the entries (private to this user) and return it; OSError when that is not
    possible. The entry's own folder is made by the atomic rename that installs it."""
    folder = path.parent.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cache folder {folder} is not writable")
    return folder
