"""The onnxruntime backend: the runtime's own engine.

A session is made from the model's bytes, with its external data handed over as bytes too, never from a path
onnxruntime would open itself: the bytes were read once and checked, so a file changed after the check cannot be
what runs.

`external_data_locations` finds every external data file a model's bytes name (a TensorProto's "location",
relative to the model's folder), so a model naming a file its bundle does not list is refused; it needs no `onnx`
package: it walks protobuf's wire format directly, skipping every payload by its length, so it touches only the
headers, never the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import ModelFiles
from tumor_edge.errors import ModelError, first_line
from tumor_edge.runtime.backends import BackendOptions, read_lone, resolve_providers, session_options


class OnnxBackend:
    """An onnxruntime InferenceSession over one .onnx model's bytes; returns every model output."""

    name = "onnxruntime"

    def __init__(self, path: Path, options: BackendOptions, files: ModelFiles | None = None):
        """`files`: the model's bytes as the caller read and checked them (None: read `path` here, once)."""
        import onnxruntime as ort

        self.path = Path(path)
        self.providers, self.missing_providers = resolve_providers(options.providers)
        files = files or lone_model_files(self.path)
        so = session_options(ort, options)
        if files.members:
            names, blobs = list(files.members), list(files.members.values())
            so.add_external_initializers_from_files_in_memory(names, blobs, [len(b) for b in blobs])
        try:
            self.session = ort.InferenceSession(files.data, sess_options=so, providers=self.providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"onnxruntime cannot load this model ({first_line(err)})", self.path) from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one image input, the model has {len(inputs)}", self.path)
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        # The batch size the graph fixes, None when it takes any. Every tumor-edge-made ONNX file has a dynamic
        # batch; a foreign file whose graph hard-codes its batch (export/foreign_onnx.py keeps it and records why)
        # is fed that many images at a time by `run`.
        first = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = first if isinstance(first, int) and not isinstance(first, bool) and first > 0 else None

    def metadata_props(self) -> dict[str, str]:
        """The model's own metadata_props (where a lone exported .onnx carries its tumor-edge metadata)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed = self.fixed_batch
        if fixed is None or len(batch) == fixed or not len(batch):
            return self._run(batch)
        # A graph that fixes its batch: feed it `fixed` images at a time, the batch padded with zeros to a whole
        # number of those and the padding's outputs dropped.
        n = len(batch)
        padded = np.concatenate([batch, np.zeros((-n % fixed, *batch.shape[1:]), batch.dtype)])
        parts = [self._run(padded[start:start + fixed]) for start in range(0, len(padded), fixed)]
        return [np.concatenate([part[i] for part in parts])[:n] for i in range(len(parts[0]))]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return [np.asarray(out, dtype=np.float32) for out in outputs]


BACKEND = OnnxBackend


# Message kinds, and which of their length-delimited fields hold which kind (onnx.proto field numbers).
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _TENSOR: {13: _ENTRY},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE, 11: _ATTR},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
}
MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); deeper than this is a hostile file, not a model
LOCATION = b"location"


class _Malformed(Exception):
    pass


def external_data_locations(model: bytes | Path, path: Path | None = None) -> list[str]:
    """Every distinct external data location a serialised model (its bytes, or the path of a file to read) names,
    in file order ([] for most models). A model too damaged to walk is a one-line ModelError naming `path` (the
    file the bytes came from) (onnxruntime could not load it either)."""
    if not isinstance(model, (bytes, bytearray, memoryview)):
        path = Path(model)
        try:
            model = path.read_bytes()
        except OSError as err:
            raise ModelError(f"cannot read the model ({err.strerror or err})", path) from err
    try:
        return _walk(model) if model else []
    except _Malformed as err:
        raise ModelError(f"not a valid ONNX model ({err}), so the data files it reads cannot be checked", path
                         ) from err


def lone_model_files(path: Path) -> ModelFiles:
    """An .onnx file outside any bundle and the external data files it names, each read once (`read_confined`):
    nothing lists their digests, so they are only read as plain files of the model's own folder."""
    path = Path(path)
    data = read_lone(path)
    members = {name: read_lone(path, name) for name in external_data_locations(data, path)}
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in {path.name: data, **members}.items()}
    return ModelFiles(path, data, members, digests)


def _walk(data) -> list[str]:
    found: dict[str, None] = {}
    stack = [(0, len(data), _MODEL, 0)]
    while stack:
        pos, end, kind, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Malformed("nested too deeply")
        if kind == _ENTRY:
            key, value = _entry(data, pos, end)
            if key == LOCATION:
                try:
                    found[value.decode("utf-8")] = None
                except UnicodeDecodeError as err:
                    raise _Malformed("a location that is not UTF-8") from err
            continue
        children = _CHILDREN[kind]
        while pos < end:
            tag = data[pos]  # one-byte numbers inline: most tags and lengths are (half the walk's time)
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(data, pos, end)
            wire = tag & 7
            if wire == 2:
                length = data[pos] if pos < end else 0x80
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = _varint(data, pos, end)
                child = children.get(tag >> 3)
                if child is not None:
                    stack.append((pos, pos + length, child, depth + 1))
                pos += length
            elif wire == 0:
                _, pos = _varint(data, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire not in (3, 4):  # 3, 4: a group's start or end; its fields are walked as this message's
                raise _Malformed(f"wire type {wire}")  # (over-reporting only refuses; protobuf accepts groups)
            if pos > end:
                raise _Malformed("a field runs past its message")
    return list(found)


def _entry(data, pos: int, end: int) -> tuple[bytes, bytes]:
    """(key, value) of a StringStringEntryProto (the last of each, as protobuf keeps)."""
    key = value = b""
    while pos < end:
        tag, pos = _varint(data, pos, end)
        if tag & 7 != 2:
            if tag & 7 == 0:
                _, pos = _varint(data, pos, end)
                continue
            raise _Malformed("an external data entry of an unexpected shape")
        length, pos = _varint(data, pos, end)
        if pos + length > end:
            raise _Malformed("a field runs past its message")
        if tag >> 3 == 1:
            key = bytes(data[pos:pos + length])
        elif tag >> 3 == 2:
            value = bytes(data[pos:pos + length])
        pos += length
    return key, value


def _varint(data, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("a truncated number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
