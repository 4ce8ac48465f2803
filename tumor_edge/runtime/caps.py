"""Size caps every decoder checks from the file's header, before it decodes a single pixel.

A 281 KB deflated DICOM can claim 12000x12000 16-bit pixels and a 248 KB PNG 64 Mpx of 16-bit grey: what costs
memory is the decoded size, not the file size. So each decoder (Pillow, pydicom, NIfTI and DICOM-series volumes)
computes width x height x channels x bytes per sample x frames (a volume: its three dimensions x bytes per voxel,
a DICOM series: files x rows x columns x bytes) from the header and refuses the file above the cap; the
later steps (min-max scaling, the DICOM display pipeline) work in blocks of rows, so the peak memory of one file
stays a small multiple of its decoded size whatever the format. A brain MRI slice is under 1 Mpx and a whole
512-slice 512x512 16-bit volume is 256 MiB, so the caps leave real scans far behind.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tumor_edge.errors import InputImageError

MAX_PIXELS = 64_000_000  # one frame: width x height
MAX_DECODED_BYTES = 256 * 1024 * 1024  # one file: width x height x channels x bytes/sample x frames decoded
MAX_FRAMES = 1024  # frames of one file classified with frames="all"
MAX_FILE_BYTES = 2 * MAX_DECODED_BYTES  # a file bigger than this cannot decode under the cap (DICOM reads it all)
BLOCK_PIXELS = 1 << 18  # blocks of about this many pixels for float work (2 MB of float64)


@dataclass(frozen=True)
class Decoded:
    """What a header promises: the size a decoder would allocate."""

    width: int
    height: int
    channels: int = 1
    bytes_per_sample: int = 1
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def nbytes(self) -> int:
        return self.pixels * self.channels * self.bytes_per_sample * self.frames

    def describe(self) -> str:
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        return (f"{self.width}x{self.height}{frames}, {self.channels} channel(s) of {self.bytes_per_sample} "
                f"byte(s)")


def check_decoded(size: Decoded, path: str | Path) -> None:
    """Refuse, before decoding, an image that is empty or would decode beyond the caps."""
    if size.width <= 0 or size.height <= 0:
        raise InputImageError(f"image has no pixels ({size.width}x{size.height})", path)
    if size.pixels > MAX_PIXELS:
        raise InputImageError(f"image too large to be a scan ({size.width}x{size.height} = {size.pixels} pixels, "
                              f"limit {MAX_PIXELS}: a decompression bomb?)", path)
    if size.nbytes > MAX_DECODED_BYTES:
        raise InputImageError(f"image too large to be a scan (decodes to {size.nbytes} bytes: {size.describe()}; "
                              f"limit {MAX_DECODED_BYTES}: a decompression bomb?)", path)


def check_total(nbytes: int, path: str | Path) -> None:
    """Refuse a file whose frames decoded so far add up to more than the cap (frames may differ in size)."""
    if nbytes > MAX_DECODED_BYTES:
        raise InputImageError(f"image too large to be a scan (its frames decode to over {nbytes} bytes, limit "
                              f"{MAX_DECODED_BYTES})", path)


def check_volume_size(shape: tuple[int, ...], bytes_per_voxel: int, path: str | Path) -> None:
    """Refuse, before reading a voxel, a volume that is empty, not 3-D, or would decode beyond the cap."""
    if any(int(s) <= 0 for s in shape):
        raise InputImageError(f"volume has a zero-size dimension (shape {tuple(shape)})", path)
    if len(shape) < 3 or any(int(s) < 2 for s in shape[:3]):
        raise InputImageError(f"not a 3-D volume (shape {tuple(shape)}): classify a single slice as an image "
                              "file", path)
    nbytes = math.prod(int(s) for s in shape[:3]) * max(1, int(bytes_per_voxel))
    if nbytes > MAX_DECODED_BYTES:
        raise InputImageError(f"volume too large to classify (shape {tuple(shape)[:3]} of {bytes_per_voxel}-byte "
                              f"voxels decodes to {nbytes} bytes, limit {MAX_DECODED_BYTES}: a corrupt header?)",
                              path)


def check_file_size(nbytes: int, path: str | Path) -> None:
    if nbytes > MAX_FILE_BYTES:
        raise InputImageError(f"file too large to be a scan ({nbytes} bytes, limit {MAX_FILE_BYTES})", path)


def check_inflated_size(fh: BinaryIO, path: str | Path, limit: int = MAX_DECODED_BYTES + (1 << 20)) -> int:
    """Inflate a raw-deflate stream from `fh` without keeping it, refusing it once it passes `limit` bytes.

    Decoders that inflate a whole stream at once (pydicom for deflated DICOM) would otherwise let a few hundred
    kilobytes claim gigabytes; this pass costs time bounded by the limit and memory bounded by one chunk.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    chunk = 1 << 20
    while True:
        data = fh.read(chunk)
        if not data:
            break
        while data:
            try:
                total += len(inflater.decompress(data, chunk))
            except zlib.error as err:
                raise InputImageError(f"corrupt deflated data ({err})", path) from None
            data = inflater.unconsumed_tail
            if total > limit:
                raise InputImageError(f"deflated data inflates to over {limit} bytes (limit {MAX_DECODED_BYTES}: "
                                      "a decompression bomb?)", path)
        if inflater.eof:
            break
    return total


def row_blocks(height: int, width: int) -> list[slice]:
    """Row ranges of about BLOCK_PIXELS pixels, so float intermediates never hold a whole large frame."""
    step = max(1, BLOCK_PIXELS // max(width, 1))
    return [slice(start, min(start + step, height)) for start in range(0, height, step)]
