"""onnxruntime's optimised form of a model, kept in this device's private cache (tumor_edge.runtime.cache) and
loaded instead of optimising the graph again at every load.

At level "all" onnxruntime rewrites a graph for this CPU (layouts, kernel choice) each time it makes a session;
the rewritten graph depends on the exact model, the onnxruntime version and the CPU. An entry is made only from
bytes that were read once and checked (`ModelFiles`): onnxruntime writes the graph it optimised while it makes the
session from those bytes. An entry is a folder keyed by the machine target and the identity of those bytes,
holding the graph (`model.onnx`), its initializers (`weights.bin`) and a record (`record.json`, with a keyed MAC:
the source's identity and digests, the machine target, the sha256 of each entry file). A hit checks the record's
MAC, reads each entry file once, compares it with the record's sha256, and hands those bytes to onnxruntime with
optimisation off; anything amiss is logged and the entry is made again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tumor_edge.contracts.bundle import ModelFiles, read_confined
from tumor_edge.errors import TumorEdgeError, first_line
from tumor_edge.runtime import cache
from tumor_edge.runtime.backends.options import BackendOptions, machine_target, session_options

ENTRY_MODEL = "model.onnx"
WEIGHTS_FILE = "weights.bin"  # the entry's initializers, beside its graph
RECORD_FILE = "record.json"


def log(message: str, *args: object) -> None:
    """Why an optimised form was not used (INFO on the "tumor_edge.runtime" logger; logging imported only here)."""
    import logging

    logging.getLogger("tumor_edge.runtime").info(message, *args)


def cached_session(ort, files: ModelFiles, options: BackendOptions, providers: list[str]):
    """(session, "cache-hit" or "cache-built") for `files`, or None: then load plainly. Never raises for a cache
    problem; a model onnxruntime cannot load raises as the plain load would."""
    identity = files.identity()
    folder = cache.entry_folder(identity, options)
    if cache.inside_bundle(folder, files.path):
        log("not using the cache for %s: %s is inside its bundle", files.path, folder)
        return None
    try:
        parent = cache.folder_for(options, cache.target_folder_name())
        session = _load_entry(ort, folder, identity, options, providers) if folder.is_dir() else None
    except OSError as err:
        log("not using the cache for %s: %s", files.path, first_line(err))
        return None
    if session is not None:
        return session, "cache-hit"
    return _build_entry(ort, files, parent, folder, identity, options, providers), "cache-built"


def _load_entry(ort, folder: Path, identity: str, options: BackendOptions, providers: list[str]):
    record = cache.read_record(folder / RECORD_FILE, options)
    if record is None or record.get("identity") != identity or record.get("target") != machine_target():
        log("rebuilding cache entry %s: its record is missing, edited, foreign or for another machine", folder)
        return None
    blobs = {}
    for name, digest in dict(record.get("files") or {}).items():
        try:
            blobs[name] = read_confined(folder, name)
        except (OSError, TumorEdgeError) as err:
            log("rebuilding cache entry %s: %s", folder, first_line(err))
            return None
        if hashlib.sha256(blobs[name]).hexdigest() != digest:
            log("rebuilding cache entry %s: %s differs from its record", folder, name)
            return None
    if ENTRY_MODEL not in blobs:
        return None
    so = session_options(ort, options, "none")
    add_members(so, {k: v for k, v in blobs.items() if k != ENTRY_MODEL})
    try:
        return ort.InferenceSession(blobs[ENTRY_MODEL], sess_options=so, providers=providers)
    except Exception as err:  # onnxruntime's own error types
        log("rebuilding cache entry %s: onnxruntime cannot load it (%s)", folder, first_line(err))
        return None


def _build_entry(ort, files: ModelFiles, parent: Path, folder: Path, identity: str, options: BackendOptions,
                 providers: list[str]):
    """A session made from the checked bytes, optimising at load, that also writes the entry (in a private
    temporary folder renamed into place whole, so concurrent first runs and a crash leave no half entry)."""
    work = Path(tempfile.mkdtemp(prefix=f".{identity[:16]}.", dir=parent))
    try:
        so = session_options(ort, options, "all")
        so.optimized_model_filepath = str(work / ENTRY_MODEL)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS_FILE)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        add_members(so, files.members)
        session = ort.InferenceSession(files.data, sess_options=so, providers=providers)
        try:
            written = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(work.iterdir())}
            cache.write_record(work / RECORD_FILE, {"identity": identity, "target": machine_target(),
                                                    "source": files.digests, "files": written}, options)
            if folder.exists():  # a damaged, edited or stale entry: replaced whole
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(work, folder)
            except OSError:
                if not folder.is_dir():  # else another process just installed the same entry: keep theirs
                    raise
        except OSError as err:
            log("not caching %s: %s", files.path, first_line(err))
        return session
    finally:
        shutil.rmtree(work, ignore_errors=True)


def add_members(so, members: dict[str, bytes]) -> None:
    """Hand files a graph reads besides itself (external data) to onnxruntime as bytes, never as paths."""
    if members:
        names = list(members)
        so.add_external_initializers_from_files_in_memory(names, [members[n] for n in names],
                                                          [len(members[n]) for n in names])
