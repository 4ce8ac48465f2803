"""Inference backends: onnxruntime always, LiteRT when `ai-edge-litert` is installed.

A registry keyed by file suffix, so adding a format is one entry. Every backend takes float32 NHWC batches in
the model's input scale and returns the raw float32 output (probabilities or logits, as the metadata says).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tumor_edge.contracts.bundle import is_optimized_name, optimized_model_name
from tumor_edge.errors import ConfigError, ModelError, first_line
from tumor_edge.machine import cpu_isa


class Backend(Protocol):
    """What the Classifier, parity and bench need from an inference engine."""

    path: Path
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, H, W, 3) -> float32 (N, classes)."""
        ...

    def input_hw(self) -> tuple[int | None, int | None]:
        """The (height, width) the model file declares, None where dynamic."""
        ...


# onnxruntime graph optimisation levels by the names users pass.
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")

# Providers "auto" leaves out: they are not local compute devices (Azure sends requests to a remote endpoint).
NOT_AUTO_PROVIDERS = frozenset({"AzureExecutionProvider"})

# Key, in a pre-optimised model's metadata_props, of a JSON record saying where and how it was optimised.
OPTIMIZED_META_KEY = "tumor_edge.ort_optimized"



def _log(message: str, *args: object) -> None:
    """Why a pre-optimised twin was skipped, for `--debug` / logging users (logging is imported only then)."""
    import logging

    logging.getLogger("tumor_edge.runtime").info(message, *args)


@dataclass
class BackendOptions:
    """How to run a model file. The defaults are the ones measured fastest to a first result on a small CPU."""

    threads: int | None = None  # None: the engine's default (all physical cores)
    providers: Sequence[str] | None = None  # onnxruntime execution providers, in priority order; CPU by default
    optimization: str = "all"  # onnxruntime graph optimisation: "all" | "extended" | "basic" | "none"
    # onnxruntime's CPU memory arena keeps freed blocks for reuse; for a one-shot classify it only raises peak
    # memory (measured: -16 MB peak RSS with InceptionV3 int8, same latency), so it is off unless asked for.
    memory_arena: bool = False
    # Load the pre-optimised sibling (`model_int8.ort.onnx` beside `model_int8.onnx`) when it was made for this
    # machine and onnxruntime version: it skips the graph optimisation at load (-75 ms for InceptionV3 int8).
    use_optimized: bool = True
    # Whether idle intra-op threads busy-wait for the next run. Spinning shaves microseconds off back-to-back
    # runs on an otherwise idle CPU but burns a core that decoding (or a neighbour) could use; off by default.
    spin: bool = False

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization must be one of {OPTIMIZATION_LEVELS}, not {self.optimization!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")


def _ort_level(ort, name: str):
    return {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[name]


def _session_options(ort, options: BackendOptions, level: str):
    so = ort.SessionOptions()
    if options.threads:
        so.intra_op_num_threads = int(options.threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = _ort_level(ort, level)
    so.enable_cpu_mem_arena = bool(options.memory_arena)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
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


def machine_target() -> dict[str, str]:
    """What a fully optimised onnxruntime graph depends on: the onnxruntime version, the CPU architecture and
    its widest vector extension (the NCHWc block size and the int8 kernels follow it)."""
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "machine": platform.machine().lower(), "isa": cpu_isa()}


def optimized_sibling(path: Path) -> Path:
    """Where export puts the pre-optimised copy of an .onnx file (naming convention in bundle.py)."""
    return path.with_name(optimized_model_name(path.name))


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, options: BackendOptions):
        import onnxruntime as ort

        self.path = Path(path)  # the model the caller asked for (a pre-optimised twin may be what runs)
        self.providers, self.missing_providers = resolve_providers(options.providers)
        self.loaded_path = self.path
        self.session = None
        cpu_only = self.providers == ["CPUExecutionProvider"]
        twin = self.path if is_optimized_name(self.path.name) else optimized_sibling(self.path)
        if options.use_optimized and cpu_only and options.optimization == "all" and twin.is_file():
            self.session = self._load_optimized(ort, twin, options)
        if self.session is None:
            so = _session_options(ort, options, options.optimization)
            self.session = self._create(ort, self.path, so)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one image input, the model has {len(inputs)}", self.path)
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_name = self.session.get_outputs()[0].name

    def _create(self, ort, path: Path, so):
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self.providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise ModelError(f"onnxruntime cannot load this model ({first_line(err)})", path) from err

    def _load_optimized(self, ort, twin: Path, options: BackendOptions):
        """The pre-optimised twin if it was made for this machine (else None: the caller loads the original)."""
        record = read_optimized_record(twin)
        if record is None:
            _log("ignoring %s: no tumor-edge optimisation record", twin)
            return None
        if twin != self.path and record.get("source_size") != self.path.stat().st_size:
            _log("ignoring %s: made from another version of %s", twin, self.path.name)
            return None
        if record.get("level") == "all" and record.get("target") != machine_target():
            _log("ignoring %s: optimised for %s, this machine is %s", twin, record.get("target"),
                     machine_target())
            return None
        # Level 'all' output is tied to the machine and loads as is; level 'extended' output is portable and
        # still gets the machine-specific layout pass at load.
        so = _session_options(ort, options, "none" if record.get("level") == "all" else "all")
        try:
            session = ort.InferenceSession(str(twin), sess_options=so, providers=self.providers)
        except Exception as err:
            _log("ignoring %s: %s", twin, first_line(err))
            return None
        self.loaded_path = twin
        return session

    def metadata_props(self) -> dict[str, str]:
        """The model's own metadata_props (where a lone exported .onnx carries its tumor-edge metadata)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def input_hw(self) -> tuple[int | None, int | None]:
        if len(self.input_shape) != 4:
            return (None, None)
        h, w = self.input_shape[1], self.input_shape[2]
        return (h if isinstance(h, int) else None, w if isinstance(w, int) else None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)


def save_optimized_model(src: Path, dst: Path, threads: int | None = None, level: str = "all") -> Path:
    """Write `dst`, the graph of `src` as onnxruntime optimises it at load, so a device skips that work.

    Export calls this once; `OnnxBackend` then loads `dst` instead of `src` with optimisation off. Level "all"
    (the default) includes the NCHWc layout rewrite and int8 kernel choices, which depend on the CPU: the file
    records the machine it was made on, and the runtime ignores it (loading `src`) anywhere else. Level
    "extended" is portable across x86/ARM and still gets the layout pass at load (for int8 InceptionV3 it keeps
    most of the gain; for fp32 it keeps little). Threads only matter for the optimisation run itself.
    """
    import json

    import onnxruntime as ort

    src, dst = Path(src), Path(dst)
    if level not in ("all", "extended"):
        raise ConfigError(f"level must be 'all' or 'extended', not {level!r}")
    options = BackendOptions(threads=threads, optimization=level)
    so = _session_options(ort, options, level)
    so.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ModelError(f"onnxruntime cannot optimise this model ({first_line(err)})", src) from err
    record = {"level": level, "source": src.name, "source_size": src.stat().st_size,
              "target": machine_target(), "onnxruntime": ort.__version__}
    append_metadata_prop(dst, OPTIMIZED_META_KEY, json.dumps(record, sort_keys=True))
    return dst


def append_metadata_prop(path: Path, key: str, value: str) -> None:
    """Add one metadata_props entry to a serialised ONNX model in place, without the `onnx` package.

    Protobuf parses a message's fields in any order and concatenates repeated fields, so appending one encoded
    `metadata_props` entry (ModelProto field 14, a StringStringEntryProto of key=1, value=2) is a valid edit.
    This keeps the device runtime free of the `onnx` package and avoids re-serialising a large model.
    """
    entry = _proto_bytes(1, key.encode()) + _proto_bytes(2, value.encode())
    with open(path, "ab") as fh:
        fh.write(_proto_bytes(14, entry))


def read_optimized_record(path: Path) -> dict | None:
    """The record `save_optimized_model` appended to a model, read from the file's tail without loading it.

    Reading it before creating a session lets the runtime skip a twin made for another machine at no cost.
    """
    import json

    marker = _varint(1 << 3 | 2) + _varint(len(OPTIMIZED_META_KEY)) + OPTIMIZED_META_KEY.encode()
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            tail = fh.read()
        at = tail.rfind(marker)
        if at < 0:
            return None
        pos = at + len(marker)
        if tail[pos] != (2 << 3 | 2):
            return None
        length, pos = _read_varint(tail, pos + 1)
        record = json.loads(tail[pos:pos + length].decode())
    except (OSError, IndexError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _proto_bytes(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class LiteRTBackend:
    name = "litert"

    def __init__(self, path: Path, options: BackendOptions):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise ModelError("running .tflite files needs LiteRT: pip install 'tumor-edge[tflite]'", path) from err
        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=options.threads or None)
            self.interpreter.allocate_tensors()
        except Exception as err:  # ValueError, RuntimeError; flatbuffer errors on a damaged file
            raise ModelError(f"LiteRT cannot load this model ({first_line(err)})", self.path) from err
        self._batch = int(self.interpreter.get_input_details()[0]["shape"][0])
        self.input_shape = [int(d) for d in self.interpreter.get_input_details()[0]["shape"]]
        self.loaded_path = self.path

    def input_hw(self) -> tuple[int | None, int | None]:
        shape = self.interpreter.get_input_details()[0]["shape"]
        return (int(shape[1]), int(shape[2])) if len(shape) == 4 else (None, None)

    def _ensure_batch(self, n: int) -> None:
        if n != self._batch:
            index = self.interpreter.get_input_details()[0]["index"]
            shape = list(self.interpreter.get_input_details()[0]["shape"])
            shape[0] = n
            self.interpreter.resize_tensor_input(index, shape, strict=False)
            self.interpreter.allocate_tensors()
            self._batch = n

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        self._ensure_batch(batch.shape[0])
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            batch = np.clip(np.round(batch / scale + zero), info.min, info.max).astype(inp["dtype"])
        self.interpreter.set_tensor(inp["index"], batch)
        self.interpreter.invoke()
        result = self.interpreter.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zero = out["quantization"]
            result = (result.astype(np.float32) - zero) * scale
        return np.asarray(result, dtype=np.float32)


BACKENDS: dict[str, Callable[[Path, BackendOptions], Backend]] = {
    ".onnx": OnnxBackend,
    ".tflite": LiteRTBackend,
}


def open_backend(path: str | Path, options: BackendOptions | None = None) -> Backend:
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    factory = BACKENDS.get(path.suffix.lower())
    if factory is None:
        raise ModelError(f"unsupported model format {path.suffix!r}; expected one of {sorted(BACKENDS)}", path)
    return factory(path, options or BackendOptions())
