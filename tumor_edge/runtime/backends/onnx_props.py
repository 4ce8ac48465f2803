"""Reading and appending one `metadata_props` entry of a serialised ONNX model without the `onnx` package.

Protobuf parses a message's fields in any order and concatenates repeated fields, so appending one encoded
`metadata_props` entry (ModelProto field 14, a StringStringEntryProto of key=1, value=2) to a model file is a
valid edit, and the last entry appended can be found again by reading only the file's tail. This keeps the device
runtime free of the `onnx` package and never re-serialises a large model.
"""

from __future__ import annotations

from pathlib import Path

TAIL_BYTES = 4096  # where an appended record is looked for: records are a few hundred bytes


def encode_metadata_prop(key: str, value: str) -> bytes:
    """The bytes that, appended to a model file, add metadata_props[key] = value."""
    entry = _field(1, key.encode()) + _field(2, value.encode())
    return _field(14, entry)


def append_metadata_prop(path: Path, key: str, value: str) -> None:
    """Add one metadata_props entry to the model file at `path`, in place."""
    with open(path, "ab") as fh:
        fh.write(encode_metadata_prop(key, value))


def read_last_prop(path: Path, key: str) -> str | None:
    """The value of the last `key` entry appended to the file, or None.

    Reads only the file's last TAIL_BYTES, so checking whether a file is the one wanted costs no model load.
    """
    marker = _varint(1 << 3 | 2) + _varint(len(key)) + key.encode()
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            start = max(0, size - TAIL_BYTES)
            fh.seek(start)
            tail = fh.read()
        at = tail.rfind(marker)
        if at < 0:
            return None
        pos = at + len(marker)
        if tail[pos] != (2 << 3 | 2):
            return None
        length, pos = _read_varint(tail, pos + 1)
        if pos + length > len(tail):
            return None
        return tail[pos:pos + length].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _field(field_number: int, payload: bytes) -> bytes:
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
