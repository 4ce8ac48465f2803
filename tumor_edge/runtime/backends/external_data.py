"""Which external data files an .onnx model makes onnxruntime read, found without the `onnx` package.

A model may keep tensors outside itself: a TensorProto with `external_data` entries, whose "location" names a file
relative to the model's folder. A bundle lists each such file with its sha256 (`ModelEntry.files`); this module
finds every location a model's bytes name, so a model naming an unlisted file is refused, and the listed files'
bytes (read and hashed once) are what onnxruntime is given instead of a path it would open itself.

The walk reads protobuf's wire format directly (ModelProto -> graphs, functions, training info -> nodes ->
attributes -> tensors, sparse tensors and subgraphs), skipping every payload by its length, so it touches only
the headers, never the weights.
"""

from __future__ import annotations

from pathlib import Path

from tumor_edge.contracts.bundle import ModelFiles, read_confined
from tumor_edge.errors import BundleIntegrityError, ModelError, first_line

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


def external_data_locations(model: bytes | Path) -> list[str]:
    """Every distinct external data location a serialised model (its bytes, or the path of a file to read) names,
    in file order ([] for most models). A model too damaged to walk is a one-line ModelError (onnxruntime could not
    load it either)."""
    path = None
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
    import hashlib

    path = Path(path)
    try:
        data = read_confined(path.parent, path.name)
        members = {name: read_confined(path.parent, name) for name in _locations(data, path)}
    except FileNotFoundError as err:
        raise ModelError(f"model file not found ({first_line(err)})", path) from err
    except OSError as err:
        raise ModelError(f"cannot read the model ({first_line(err)})", path) from err
    except BundleIntegrityError as err:
        raise ModelError(err.reason, err.path or path) from err
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in {path.name: data, **members}.items()}
    return ModelFiles(path, data, members, digests)


def _locations(data: bytes, path: Path) -> list[str]:
    try:
        return external_data_locations(data)
    except ModelError as err:
        raise ModelError(err.reason, path) from err


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
