"""Generators of hostile inputs for the runtime tests: special files, decompression bombs, degenerate images,
names that break CSV or terminals. Everything is made on the fly in a test's folder; nothing is committed.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from PIL import Image

from tests.runtime.models import quadrant_metadata, quadrant_model

MR_STORAGE = b"1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
DEFLATED_LE = b"1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OW", b"UN", b"SQ", b"UT"}


def within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread; a call still blocked after `seconds` fails the test (and stays blocked)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for over {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_socket(path: Path) -> Path:
    """A Unix socket file (the socket is closed again; its file stays, as a crashed server's would)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
    finally:
        server.close()
    return path


def make_device_link(path: Path, device: str = "/dev/zero") -> Path:
    """A link to a character device (no privilege needed): reading it never ends."""
    path.symlink_to(device)
    return path


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH", group, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _meta(syntax: bytes) -> bytes:
    body = (_element(2, 1, b"OB", b"\0\1") + _element(2, 2, b"UI", MR_STORAGE)
            + _element(2, 3, b"UI", b"1.2.3.4.5.6.7") + _element(2, 0x10, b"UI", syntax))
    return b"\0" * 128 + b"DICM" + _element(2, 0, b"UL", struct.pack("<I", len(body))) + body


def _image_header(rows: int, columns: int, frames: int = 1, bits: int = 16) -> bytes:
    header = (_element(8, 0x16, b"UI", MR_STORAGE) + _element(8, 0x60, b"CS", b"MR")
              + _element(0x28, 2, b"US", struct.pack("<H", 1)) + _element(0x28, 4, b"CS", b"MONOCHROME2"))
    if frames > 1:
        header += _element(0x28, 8, b"IS", str(frames).encode())
    return header + (_element(0x28, 0x10, b"US", struct.pack("<H", rows))
                     + _element(0x28, 0x11, b"US", struct.pack("<H", columns))
                     + _element(0x28, 0x100, b"US", struct.pack("<H", bits))
                     + _element(0x28, 0x101, b"US", struct.pack("<H", bits))
                     + _element(0x28, 0x102, b"US", struct.pack("<H", bits - 1))
                     + _element(0x28, 0x103, b"US", struct.pack("<H", 0)))


def deflated_dicom_bomb(path: Path, rows: int = 12_000, columns: int = 12_000) -> Path:
    """A deflated DICOM of `rows` x `columns` 16-bit zeros: the issue's 12000x12000 one is ~1 MB on disk (level 1)
    and inflates to 288 MB, whose decoding peaked at 5.4 GB in 0.1.0."""
    nbytes = rows * columns * 2
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        fh.write(_meta(DEFLATED_LE))
        fh.write(compressor.compress(_image_header(rows, columns)))
        fh.write(compressor.compress(struct.pack("<HH", 0x7FE0, 0x10) + b"OW\0\0" + struct.pack("<I", nbytes)))
        zeros = b"\0" * (1 << 22)
        for start in range(0, nbytes, len(zeros)):
            fh.write(compressor.compress(zeros[:min(len(zeros), nbytes - start)]))
        fh.write(compressor.flush())
    return path


def dicom_claiming(path: Path, rows: int, columns: int, frames: int, payload: bytes = b"\0" * 16) -> Path:
    """An uncompressed DICOM whose header claims rows x columns x frames 16-bit pixels and holds `payload`."""
    pixel_data = struct.pack("<HH", 0x7FE0, 0x10) + b"OW\0\0" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(_meta(EXPLICIT_LE) + _image_header(rows, columns, frames) + pixel_data)
    return path


def nan_bundle(folder: Path) -> Path:
    """A quadrant bundle whose model emits NaN for every image (a NaN bias: a broken model), its metadata
    listing the file's true size and sha256."""
    from tumor_edge.contracts.bundle import describe_file

    folder.mkdir(parents=True, exist_ok=True)
    metadata = quadrant_metadata()
    model = quadrant_model(metadata=metadata)
    for initializer in model.graph.initializer:
        if initializer.name == "B":
            initializer.CopyFrom(onnx.numpy_helper.from_array(np.full(4, np.nan, np.float32), "B"))
    model_path = folder / "model_fp32.onnx"
    onnx.save(model, model_path)
    metadata.models = {model_path.name: describe_file(model_path, "onnx", "fp32")}
    metadata.write(folder)
    return folder


def animated_gif(path: Path, frames: list[np.ndarray]) -> Path:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def unprivileged_runner() -> list[str] | None:
    """A command prefix that drops root's privileges (root ignores permission bits), or None if there is none.

    Returns [] when the tests already run unprivileged."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "nobody", "--"]
    return None


def world_readable_folder() -> Path:
    """A fresh folder that an unprivileged user can enter (pytest's tmp_path is root-only when run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="tumor-edge-perm-"))
    folder.chmod(0o755)
    return folder


def classify_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tumor_edge.cli", "classify", *args]


def run_classify(*args: str, prefix: list[str] | None = None, env: dict | None = None, timeout: float = 120,
                 **kwargs) -> subprocess.CompletedProcess:
    """`tumor-edge classify` in a real process (a hang fails the test by timeout instead of hanging it)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("TUMOR_EDGE_MODEL", None)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                         full_env.get("PYTHONPATH")) if p)
    streams = {} if "stdout" in kwargs else {"capture_output": True}
    return subprocess.run([*(prefix or []), *classify_command(*map(str, args))], env=full_env, timeout=timeout,
                          **streams, **kwargs)
