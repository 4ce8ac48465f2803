"""onnxruntime's optimised form of a model, and the record that binds it to its source file and machine.

At level "all" onnxruntime rewrites a graph for this CPU (NCHWc layout, int8 kernel choice) at every session
load; saving that graph once (`SessionOptions.optimized_model_filepath`) and loading it with optimisation off
skips the work (-75 ms for InceptionV3 int8). Such a file is only right for the exact model it was made from and
for this onnxruntime version and CPU, so each one carries a record, appended as a metadata_props entry:

    {"level", "source", "source_size", "source_sha256", "target": machine_target(), "body_size", "body_sha256",
     "body_crc32"}

`source_sha256` binds it to one model file (0.1.0 compared sizes only, so a stale or foreign twin of the same
size was loaded); `body_sha256` / `body_crc32` cover the file's bytes before the record, so a damaged or altered
optimised file is detected, not run. The record proves nothing on its own: whoever writes the file writes its
record too, so a file found in a bundle is never loaded in its model's place because of one (issue 22: a forged
twin with a record naming the listed model's sha256 ran instead of it). Records are trusted only in the device's
own cache (private to the user, written by this runtime), where CRC32 catches damage (a torn copy, a bad disk) at
half sha256's cost on the cold-start path: whoever can forge an entry there can already replace tumor-edge itself.
A twin a caller names itself (and its bundle lists with a sha256) is checked with sha256 before its record picks
how it loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tumor_edge.errors import ConfigError, ModelError, first_line
from tumor_edge.runtime.backends.onnx_props import append_metadata_prop, encode_metadata_prop, read_last_prop
from tumor_edge.runtime.backends.options import BackendOptions, machine_target, session_options

# Key, in an optimised model's metadata_props, of the JSON record above.
OPTIMIZED_META_KEY = "tumor_edge.ort_optimized"
SAVABLE_LEVELS = ("all", "extended")
# The initializers of a cached optimised model live in this file beside it: onnxruntime maps such external data
# instead of copying it out of the parsed model, which lowers peak memory at load (InceptionV3 int8 at 299 px:
# 95 MB instead of 100-108 MB, measured in a bare onnxruntime process).
WEIGHTS_FILE = "weights.bin"


def read_optimized_record(path: Path) -> dict[str, Any] | None:
    """The record of an optimised model, read from the file's tail without loading it (None: no record)."""
    raw = read_last_prop(Path(path), OPTIMIZED_META_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


BODY_CHECKS = ("sha256", "crc32", "size")


def usable_optimized(path: Path, source_sha256: str, check: str = "sha256") -> tuple[dict | None, str]:
    """(record, "") when `path` is an intact optimised form of the model whose sha256 is `source_sha256`, made
    for this machine; else (None, why not). `check`: how the body is verified ("size" only checks the lengths;
    the loader then runs `body_problem` with a digest beside the session load). Never raises: a bad optimised
    file is only a slower start."""
    path = Path(path)
    record = read_optimized_record(path)
    if record is None:
        return None, "no tumor-edge optimisation record"
    if not source_sha256 or record.get("source_sha256") != source_sha256:
        return None, "made from another model file"
    if record.get("level") not in SAVABLE_LEVELS:
        return None, f"unknown optimisation level {record.get('level')!r}"
    if record.get("level") == "all" and record.get("target") != machine_target():
        return None, f"optimised for {record.get('target')}, this machine is {machine_target()}"
    why = body_problem(path, record, check)
    return (None, why) if why else (record, "")


def body_problem(path: Path, record: dict, check: str) -> str:
    """'' when the optimised file's body (the bytes before its record) and its external weights match `record`:
    their lengths, and with check "sha256" or "crc32" their digests; else what is wrong. Never raises."""
    path = Path(path)
    body_size = record.get("body_size")
    raw = read_last_prop(path, OPTIMIZED_META_KEY) or ""
    try:
        size = path.stat().st_size
    except OSError as err:
        return first_line(err)
    if not isinstance(body_size, int) or size != body_size + len(encode_metadata_prop(OPTIMIZED_META_KEY, raw)):
        return "truncated or extended after it was made"
    weights = record.get("weights")
    if weights is not None:
        why = _check_weights(path.parent, weights, "size")
        if why:
            return why
    if check == "size":
        return ""
    try:
        if _digest_prefix(path, body_size, check) != record.get(f"body_{check}"):
            return f"damaged: its {check} differs from its record"
    except OSError as err:
        return first_line(err)
    return _check_weights(path.parent, weights, check) if weights is not None else ""


def _check_weights(folder: Path, weights: Any, check: str) -> str:
    """'' when the external weights file a record names is intact, else why not."""
    if not isinstance(weights, dict) or weights.get("file") != WEIGHTS_FILE:
        return "its weights record is invalid"
    path = folder / WEIGHTS_FILE
    try:
        size = path.stat().st_size
        if size != weights.get("size"):
            return f"its {WEIGHTS_FILE} is truncated or replaced"
        if check != "size" and _digest_prefix(path, size, check) != weights.get(check):
            return f"its {WEIGHTS_FILE} is damaged ({check} differs)"
    except OSError:
        return f"its {WEIGHTS_FILE} is missing or unreadable"
    return ""


DIGEST_BLOCK = 1 << 18  # bytes read at a time by digest_file


def digest_file(path: Path, kind: str = "sha256", size: int | None = None) -> str:
    """sha256 or CRC32 (hex) of a file, or of its first `size` bytes. Reads into one reused 256 KB buffer: a
    fresh bytes object per block would leave freed blocks in the malloc arena of the thread that checks (checks
    run beside the session load) and raise the process's peak memory by megabytes (measured: +3 MB)."""
    import zlib

    digest = None
    crc = 0
    if kind == "sha256":
        import hashlib

        digest = hashlib.sha256()
    buffer = bytearray(DIGEST_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        left = size if size is not None else os.fstat(fh.fileno()).st_size
        while left > 0:
            n = fh.readinto(view[:min(left, DIGEST_BLOCK)])
            if not n:
                break
            if digest is not None:
                digest.update(view[:n])
            else:
                crc = zlib.crc32(view[:n], crc)
            left -= n
    return digest.hexdigest() if digest is not None else f"{crc:08x}"


def _digest_prefix(path: Path, size: int, kind: str) -> str:
    return digest_file(path, kind, size)


def build_optimized(ort, src: Path, dst: Path, options: BackendOptions, source_sha256: str,
                    providers: list[str] | None = None, level: str = "all", external_weights: bool = False):
    """Create a session for `src` at `level` that also writes its optimised graph to `dst`, and return the
    session: the first use of a model pays for the optimisation once, as it would without a cache, and later
    loads skip it.

    Atomic: everything is written under a temporary name in dst's folder, the record appended, then renamed into
    place. With `external_weights` the initializers go to WEIGHTS_FILE beside the model, and the unit renamed
    into place is dst's whole folder (one entry of the cache), which must hold nothing else.
    Raises OSError when the folder cannot be written and onnxruntime's errors when it cannot load `src`.
    """
    src, dst = Path(src), Path(dst)
    token = f"{os.getpid()}.{os.urandom(4).hex()}.tmp"
    if external_weights:
        final_dir = dst.parent
        work_dir = final_dir.with_name(f".{final_dir.name}.{token}")
        work_dir.mkdir(mode=0o700)
        tmp = work_dir / dst.name
    else:
        work_dir = None
        tmp = dst.with_name(f".{dst.name}.{token}")
    try:
        so = session_options(ort, options, level)
        so.optimized_model_filepath = str(tmp)
        if external_weights:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS_FILE)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        session = ort.InferenceSession(str(src), sess_options=so, providers=providers or ["CPUExecutionProvider"])
        body_size = tmp.stat().st_size
        record = {"level": level, "source": src.name, "source_size": src.stat().st_size,
                  "source_sha256": source_sha256, "target": machine_target(), "onnxruntime": ort.__version__,
                  "body_size": body_size, "body_sha256": _digest_prefix(tmp, body_size, "sha256"),
                  "body_crc32": _digest_prefix(tmp, body_size, "crc32")}
        weights = tmp.parent / WEIGHTS_FILE
        if external_weights and weights.is_file():
            size = weights.stat().st_size
            record["weights"] = {"file": WEIGHTS_FILE, "size": size, "sha256": _digest_prefix(weights, size, "sha256"),
                                 "crc32": _digest_prefix(weights, size, "crc32")}
        append_metadata_prop(tmp, OPTIMIZED_META_KEY, json.dumps(record, sort_keys=True))
        if work_dir is None:
            os.replace(tmp, dst)
        else:
            if final_dir.exists():  # a damaged or stale entry: replaced whole
                shutil.rmtree(final_dir, ignore_errors=True)
            try:
                os.rename(work_dir, final_dir)
            except OSError:
                if not final_dir.is_dir():  # else another process just installed the same entry: keep theirs
                    raise
    finally:
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return session


def save_optimized_model(src: Path, dst: Path, threads: int | None = None, level: str = "all") -> Path:
    """Write `dst`, the graph of `src` as onnxruntime optimises it at load, bound to src's sha256.

    Level "all" (the default) includes the NCHWc layout rewrite and int8 kernel choices, which depend on the CPU:
    the record names the machine, and the runtime ignores the file anywhere else. Level "extended" is portable
    across x86/ARM and still gets the layout pass at load. Bundles no longer carry such files (each device caches
    its own, see tumor_edge.runtime.cache); this stays for tools that want one file per machine.
    """
    import onnxruntime as ort

    from tumor_edge.contracts.bundle import sha256_file

    src, dst = Path(src), Path(dst)
    if level not in SAVABLE_LEVELS:
        raise ConfigError(f"level must be one of {', '.join(SAVABLE_LEVELS)}, not {level!r}")
    options = BackendOptions(threads=threads, optimization=level)
    try:
        digest = sha256_file(src)
    except OSError as err:
        raise ModelError(f"cannot read the model ({first_line(err)})", src) from err
    try:
        build_optimized(ort, src, dst, options, digest, level=level)
    except OSError as err:
        raise ModelError(f"cannot write the optimised model ({first_line(err)})", dst) from err
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ModelError(f"onnxruntime cannot optimise this model ({first_line(err)})", src) from err
    return dst
