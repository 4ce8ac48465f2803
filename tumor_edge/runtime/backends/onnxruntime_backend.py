"""The onnxruntime backend: the runtime's own engine.

A session is made from the model's bytes (`InferenceSession(bytes)`), with its external data handed over as bytes
too (`SessionOptions.add_external_initializers_from_files_in_memory`), never from a path onnxruntime would open
itself: the bytes were read once and checked (a bundle's against its metadata, see
tumor_edge.runtime.open_model), so a file changed after the check cannot be what runs. onnxruntime optimises
the graph for this CPU at each load (`BackendOptions.optimization`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import ModelFiles
from tumor_edge.errors import ModelError, first_line
from tumor_edge.runtime.backends.external_data import lone_model_files
from tumor_edge.runtime.backends.options import BackendOptions, resolve_providers, session_options
from tumor_edge.runtime.backends.protocol import hw_of


class OnnxBackend:
    """An onnxruntime InferenceSession over one .onnx model's bytes; returns every model output."""

    name = "onnxruntime"

    def __init__(self, path: Path, options: BackendOptions, sha256: str | None = None,
                 source_check: Callable[[], object] | None = None, files: ModelFiles | None = None):
        """`files`: the model's bytes as the caller read and checked them (None: read `path` here, once).
        `sha256` and `source_check` are what the registry's `open_backend` passes: the check runs before anything
        is read; the digest is not needed."""
        import onnxruntime as ort

        if source_check is not None:
            source_check()
        self.path = self.loaded_path = Path(path)
        self.providers, self.missing_providers = resolve_providers(options.providers)
        files = files or lone_model_files(self.path)
        so = session_options(ort, options, options.optimization)
        if files.members:
            names = list(files.members)
            blobs = [files.members[n] for n in names]
            so.add_external_initializers_from_files_in_memory(names, blobs, [len(b) for b in blobs])
        try:
            session = ort.InferenceSession(files.data, sess_options=so, providers=self.providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"onnxruntime cannot load this model ({first_line(err)})", self.path) from err
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


# What the backend registry (registry.py) opens this engine's files with: the module named by its row in the
# format table (tumor_edge.contracts.formats.ENGINES).
BACKEND = OnnxBackend
