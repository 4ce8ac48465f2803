"""Inference backends: what every engine offers (`Backend`), how to run one (`BackendOptions`, onnxruntime
session options, providers, the machine target) and the registry that turns a file's engine into its backend
(`open_backend`). The engines are their own modules (`onnxruntime_backend`, `litert_backend` when `ai-edge-litert`
is installed), each given a model's bytes, imported the first time a file of that engine is opened.

Every backend takes float32 NHWC batches in the model's input scale and returns every model output, in model
order. The Classifier, export's parity, bench and verify use only the `Backend` members, so a new engine is one
module that implements them (its class named `BACKEND` there) plus its row in the format table
(contracts/formats.py), and no caller needs `getattr` to find out what a backend can do.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tumor_edge.contracts.bundle import read_confined
from tumor_edge.contracts.formats import ENGINES, Engine, engine_for_suffix
from tumor_edge.errors import BundleIntegrityError, ConfigError, MissingExtraError, ModelError, first_line

if TYPE_CHECKING:
    import numpy as np

@runtime_checkable
class Backend(Protocol):
    """One loaded model file, ready to run float32 NHWC batches in the model's input scale."""

    name: str  # the engine: a key of tumor_edge.contracts.formats.ENGINES
    path: Path  # the model file the caller asked for
    input_shape: list  # the declared input shape; ints, or None/str where dynamic (`hw_of` reads its size)
    output_names: list[str]  # every model output, in model order (what `run` returns, in the same order)
    providers: list[str]  # what executes it, in priority order (onnxruntime execution providers; [] for LiteRT)
    missing_providers: list[str]  # providers the caller asked for that this installation lacks

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """float32 (N, H, W, 3) -> every output as float32, in `output_names` order."""
        ...

    def metadata_props(self) -> dict[str, str]:
        """Key/value metadata the model file carries ({} for formats without any)."""
        ...


def hw_of(shape: list) -> tuple[int | None, int | None]:
    """(height, width) of an NHWC shape, None for dynamic or non-image dimensions."""
    if len(shape) != 4:
        return (None, None)
    h, w = shape[1], shape[2]
    return (h if isinstance(h, int) and h > 0 else None, w if isinstance(w, int) and w > 0 else None)


# onnxruntime graph optimisation levels by the names users pass -> onnxruntime's GraphOptimizationLevel member.
OPTIMIZATION_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                       "none": "ORT_DISABLE_ALL"}

# Providers "auto" leaves out: they are not local compute devices (Azure sends requests to a remote endpoint).
NOT_AUTO_PROVIDERS = frozenset({"AzureExecutionProvider"})


@dataclass
class BackendOptions:
    """How to run a model file. The defaults are the ones measured fastest to a first result on a small CPU."""

    threads: int | None = None  # None: the engine's default (all physical cores)
    providers: Sequence[str] | None = None  # onnxruntime execution providers, in priority order; CPU by default
    optimization: str = "all"  # onnxruntime graph optimisation: "all" | "extended" | "basic" | "none"
    # onnxruntime's CPU memory arena (and its memory pattern) keep a run's blocks for the next run. For one batch
    # they only raise the peak, so they are off unless asked for; for many batches they keep memory flat, so a
    # caller that knows it runs many batches (a folder, a server) should turn this on.
    memory_arena: bool = False
    # Whether idle intra-op threads busy-wait for the next run. Spinning shaves microseconds off back-to-back
    # runs on an otherwise idle CPU but burns a core that decoding (or a neighbour) could use; off by default.
    spin: bool = False
    # Whether intra-op threads busy-wait between the nodes of one run and stop when it ends
    # (`session.force_spinning_stop`): each of a small model's nodes wakes the pool, and a sleeping thread takes
    # microseconds to wake, so one image at a time gets faster; a folder stream gets slower, the spinning threads
    # taking the decoders' cores. Off by default; for one image at a time with 2+ threads.
    spin_within_run: bool = False
    # This device's folder of records (runtime.choice.cache_root; None: $TUMOR_EDGE_CACHE_DIR, else
    # $XDG_CACHE_HOME/tumor-edge, else ~/.cache/tumor-edge). Off with cache=False or TUMOR_EDGE_NO_CACHE=1.
    cache_dir: str | None = None
    cache: bool = True
    # A signed bundle's required signer and pins (a tumor_edge.signing.trust.TrustPolicy or its text): the open
    # stage checks the signature against the digests of the bytes it loads. None: $TUMOR_EDGE_TRUST decides;
    # False: no signature required (export's parity of the bundle it is making).
    trust: object | None = None

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                              f"not {self.optimization!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a whole number of at least 1, not {self.threads!r}")
        if isinstance(self.providers, str):
            self.providers = [self.providers]  # "CPU" is one provider, not three letters


def session_options(ort, options: BackendOptions):
    """onnxruntime SessionOptions for `options`."""
    so = ort.SessionOptions()
    if options.threads:
        so.intra_op_num_threads = int(options.threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[options.optimization])
    so.enable_cpu_mem_arena = bool(options.memory_arena)
    # Without the arena, a memory pattern only adds a planned block per input shape to the heap, nothing gained.
    so.enable_mem_pattern = bool(options.memory_arena)
    within_run = options.spin_within_run and not options.spin and options.threads != 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin or within_run else "0")
    if within_run:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 3
    return so


def resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(providers to use, requested ones this onnxruntime build lacks). "auto" means every available one in
    onnxruntime's own priority order (CUDA, CoreML, ... before CPU). CPU is always the last resort."""
    import onnxruntime as ort

    if not requested:
        return ["CPUExecutionProvider"], []
    available = list(ort.get_available_providers())
    wanted: list[str] = []
    for name in requested:
        if name.lower() == "auto":
            wanted.extend(a for a in available if a not in NOT_AUTO_PROVIDERS)
            continue
        full = name if name.endswith("ExecutionProvider") else f"{name}ExecutionProvider"
        match = next((a for a in available if a.lower() == full.lower()), None)
        wanted.append(match or full)
    use = [p for p in dict.fromkeys(wanted) if p in available]
    missing = [p for p in dict.fromkeys(wanted) if p not in available]
    if "CPUExecutionProvider" not in use:
        use.append("CPUExecutionProvider")
    return use, missing


@functools.lru_cache(maxsize=1)
def machine_target() -> dict[str, str]:
    """What a fully optimised onnxruntime graph depends on: the onnxruntime version, the CPU architecture and
    its widest vector extension (the NCHWc block size and the int8 kernels follow it). Read once per process
    (/proc/cpuinfo): the same dict each call, not to be changed."""
    import onnxruntime as ort

    # tumor_edge.machine pulls in importlib.metadata (+ zipfile, email): imported only when a target is needed.
    from tumor_edge.machine import cpu_isa

    return {"onnxruntime": ort.__version__, "machine": platform.machine().lower(), "isa": cpu_isa()}


BackendFactory = Callable[..., Backend]  # (path, options, files=None) -> Backend


def backend_factory(engine: str) -> BackendFactory:
    """The factory for `engine`: its row's backend module's BACKEND, the module imported on first use (Python
    keeps it in sys.modules, so a row changed at run time is followed)."""
    return importlib.import_module(ENGINES[engine].backend).BACKEND


def engine_row(path: Path) -> Engine:
    """The format table's row for the engine that runs this file, or a one-line error: an unknown suffix
    (ModelError) or a missing optional package (MissingExtraError). Cheap (no engine import), so callers can say
    so before hashing a model."""
    path = Path(path)
    name = engine_for_suffix(path.suffix)
    if name is None:
        known = sorted(e.suffix for e in ENGINES.values())
        raise ModelError(f"unsupported model format {path.suffix!r}; expected one of {known}", path)
    engine = ENGINES[name]
    if engine.module and importlib.util.find_spec(engine.module) is None:
        raise MissingExtraError(f"running {engine.suffix} files needs {engine.title}: {engine.install_hint()}", path)
    return engine


def read_lone(path: Path, name: str | None = None) -> bytes:
    """A model file outside any bundle (or `name`, a file beside it), read once as a plain file of its folder
    (`read_confined`: nothing lists its digest); a one-line ModelError when it cannot be."""
    try:
        return read_confined(path.parent, name or path.name)
    except FileNotFoundError as err:
        raise ModelError(f"model file not found ({first_line(err)})", path) from err
    except OSError as err:
        raise ModelError(f"cannot read the model ({first_line(err)})", path) from err
    except BundleIntegrityError as err:
        raise ModelError(err.reason, err.path or path) from err


def open_backend(path: str | Path, options: BackendOptions | None = None) -> Backend:
    """Load a model file with the engine its suffix names (a file outside a bundle, or one export has just
    written: a bundle's listed files go through `classifier.open_bundle_model`, which reads, checks and hands
    over the bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    engine = engine_row(path)
    for companion in engine.companions(path.name):
        if not (path.parent / companion).is_file():
            raise ModelError(f"{engine.title} needs {companion} beside this file, and it is missing", path)
    return backend_factory(engine.name)(path, options or BackendOptions())
