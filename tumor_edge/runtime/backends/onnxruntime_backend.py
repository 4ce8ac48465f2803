"""The onnxruntime backend: the runtime's own engine, with the optimised form of each model cached per device.

Which file a session is made from, in order (CPU provider and optimisation "all" only; any problem falls through
to the next, logged, never an error):
1. this device's cache entry for the model's identity (its sha256, tumor_edge.runtime.cache), which lives in the
   per-user cache folder outside any bundle and was written, with its hashes, by this runtime;
2. the model itself, optimising at load and saving the result as the cache entry for the next run;
3. the model itself, plain (cache off, unwritable, inside the model's bundle, or the save failed).

A file lying beside the model is never loaded in its place: 0.1 bundles carried an optimised twin
(`model_int8.ort.onnx`) whose own record said which model it was made from, so whoever could write into a bundle
could put any model there with a record vouching for itself, and it ran instead of the sha256-checked file
(issue 22). Only a twin that a caller names itself, and that its bundle lists with a sha256, is still loaded.

The integrity checks overlap the load: a caller still hashing the model file passes that check as
`source_check`, and a cache entry's CRC32 runs beside its session load (tumor_edge.runtime.background). Nothing
is read from the model file itself before its check has passed, and no backend is returned before every check
has; a cache entry that fails its CRC is dropped and rebuilt. On a cache hit this takes the ~40 ms of digests
off the critical path of a one-image run (2-core Xeon).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import is_optimized_name, optimized_model_name
from tumor_edge.errors import ModelError, first_line
from tumor_edge.runtime import cache
from tumor_edge.runtime.backends.external_data import external_data_locations
from tumor_edge.runtime.backends.optimized import (
    body_problem,
    build_optimized,
    digest_file,
    read_optimized_record,
    usable_optimized,
)
from tumor_edge.runtime.backends.options import BackendOptions, resolve_providers, session_options
from tumor_edge.runtime.backends.protocol import hw_of
from tumor_edge.runtime.background import Background


def _log(message: str, *args: object) -> None:
    """Why an optimised form was not used (INFO on the "tumor_edge.runtime" logger). `logging` is imported only
    here: it costs start-up time and memory on every classify otherwise."""
    import logging

    logging.getLogger("tumor_edge.runtime").info(message, *args)


def optimized_sibling(path: Path) -> Path:
    """Where a 0.1-style bundle kept the pre-optimised copy of an .onnx file (never loaded from there now)."""
    return path.with_name(optimized_model_name(path.name))


class OnnxBackend:
    """An onnxruntime InferenceSession over one .onnx file; returns every model output."""

    name = "onnxruntime"

    def __init__(self, path: Path, options: BackendOptions, sha256: str | None = None,
                 source_check: Callable[[], object] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.loaded_path = self.path
        self.providers, self.missing_providers = resolve_providers(options.providers)
        # How the session was made: "plain", "twin", "cache-hit", "cache-built" (for logs, bench and tests).
        self.source_kind = "plain"
        check = _Once(source_check)
        session = None
        if options.use_optimized and self.providers == ["CPUExecutionProvider"] and options.optimization == "all":
            session = self._optimized_session(ort, options, sha256, check)
        if session is None:
            check()
            session = self._create(ort, self.path, session_options(ort, options, options.optimization))
        check()  # no backend for a model file that failed its check, whatever was loaded meanwhile
        self.session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one image input, the model has {len(inputs)}", self.path)
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_names = [o.name for o in session.get_outputs()]
        # The batch size the graph fixes, None when it takes any. Every tumor-edge-made ONNX file has a dynamic
        # batch; a foreign file whose graph hard-codes its batch (export/foreign_onnx.py keeps it and records why)
        # is fed that many images at a time by `run`.
        first = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = first if isinstance(first, int) and not isinstance(first, bool) and first > 0 else None

    def _create(self, ort, path: Path, so):
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=self.providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise ModelError(f"onnxruntime cannot load this model ({first_line(err)})", path) from err

    def _try_load(self, ort, path: Path, options: BackendOptions, level: str):
        try:
            return ort.InferenceSession(str(path), sess_options=session_options(ort, options, level),
                                        providers=self.providers)
        except Exception as err:
            _log("ignoring optimised model %s: %s", path, first_line(err))
            return None

    def _optimized_session(self, ort, options: BackendOptions, sha256: str | None, check: _Once):
        """A session from an optimised form of the model (a twin named directly, a cache hit, or built now); None:
        load plainly. `check` is called before the model file itself is read (a cache entry is not that file)."""
        twin_check = "sha256" if options.verify_hashes else "size"
        if is_optimized_name(self.path.name):  # a twin named directly: use it where it was made, else plainly
            check()
            record = read_optimized_record(self.path) or {}
            ok, why = usable_optimized(self.path, record.get("source_sha256", ""), twin_check)
            if ok and ok.get("level") == "all":
                self.source_kind = "twin"
                return self._try_load(ort, self.path, options, "none")
            return None
        try:
            digest = sha256 or digest_file(self.path)
            if sha256 is None and external_data_locations(self.path):
                # A file opened on its own names data nothing lists or hashes: its sha256 is not what it runs,
                # so no cache entry can be keyed by it (a bundle's caller passes an identity covering the data).
                _log("not caching %s: it reads external data", self.path)
                return None
        except (OSError, ModelError):
            return None  # the plain load reports the unreadable file
        if not cache.cache_enabled(options):
            return None
        entry = cache.entry_path(digest, options)
        if cache.inside_bundle(entry, self.path):  # a cache pointed into the model's bundle is no cache
            _log("not using the cache for %s: %s is inside its bundle", self.path, entry.parent.parent)
            return None
        try:  # a cache this user cannot enter (made by another user, 0700) is no cache, never an error
            exists = entry.is_file()
        except OSError as err:
            _log("not using the cache for %s: %s", self.path, first_line(err))
            return None
        if exists:
            session, why = self._cache_hit(ort, entry, digest, options)
            if session is not None:
                return session
            _log("rebuilding cache entry %s: %s", entry, why)
        check()  # building reads the model file itself
        try:
            cache.prepare_folder(entry)
            session = build_optimized(ort, self.path, entry, options, digest, self.providers, external_weights=True)
        except OSError as err:
            _log("not caching %s: %s", self.path, first_line(err))
            return None
        except Exception as err:  # the model itself cannot load: the plain load says so as a ModelError
            _log("cannot optimise %s: %s", self.path, first_line(err))
            return None
        self.source_kind = "cache-built"
        return session

    def _cache_hit(self, ort, entry: Path, digest: str, options: BackendOptions):
        """(session, "") from this device's cache entry, or (None, why not). Record and lengths are checked
        first; the CRC32 of its bytes runs beside the session load and must pass before the session is used."""
        record, why = usable_optimized(entry, digest, "size")
        if record is None:
            return None, why
        damage = Background(body_problem, entry, record, "crc32") if options.verify_hashes else None
        session = self._try_load(ort, entry, options, "none")
        why = damage.result() if damage is not None else ""
        if why or session is None:
            return None, why or "onnxruntime cannot load it"
        self.loaded_path, self.source_kind = entry, "cache-hit"
        return session, ""

    def metadata_props(self) -> dict[str, str]:
        """The model's own metadata_props (where a lone exported .onnx carries its tumor-edge metadata)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def input_hw(self) -> tuple[int | None, int | None]:
        return hw_of(self.input_shape)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed = self.fixed_batch
        if fixed is None or len(batch) == fixed or not len(batch):
            return self._run(batch)
        # A graph that fixes its batch: feed it `fixed` images at a time, the last chunk padded with zeros and the
        # padding's outputs dropped.
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(batch), fixed):
            chunk = batch[start:start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([out[:n] for out in self._run(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return [np.asarray(out, dtype=np.float32) for out in outputs]


class _Once:
    """A check to run at most once (None: nothing to check); its exception is raised on the first call only,
    which is the one that decides."""

    def __init__(self, check: Callable[[], object] | None):
        self._check = check

    def __call__(self) -> None:
        check, self._check = self._check, None
        if check is not None:
            check()


# What the backend registry (registry.py) opens this engine's files with: the module named by its row in the
# format table (tumor_edge.contracts.formats.ENGINES).
BACKEND = OnnxBackend
