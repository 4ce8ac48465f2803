"""The reader interface: what every input type (a 2-D image, a DICOM file, a DICOM series, a NIfTI volume) gives.

A `Reader` is one row of the registry (`readers/__init__.py`); every consumer reads through the registry, so a new
reader reaches all of them. `read` gives a `Scan`: the pictures to classify (8-bit RGB at their own size) with
their provenance. A volume's pictures come one at a time, so memory holds the volume and one slice, never every
slice decoded.

Size caps: what costs memory is the decoded size, not the file size (a 281 KB deflated DICOM can claim 12000x12000
16-bit pixels). So each decoder computes the decoded size from the header and refuses the file above the cap
before it decodes a pixel, and the later steps (min-max scaling, the DICOM display pipeline) work in blocks of
rows, so one file's peak memory stays a small multiple of its decoded size. A brain MRI slice is under 1 Mpx and
a 512-slice 512x512 16-bit volume is 256 MiB: the caps leave real scans far behind.
"""

from __future__ import annotations

import errno
import importlib
import math
import os
import stat
import traceback
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tumor_edge.errors import ConfigError, InputImageError

if TYPE_CHECKING:  # Pillow loads with the first picture: classify's help lists the rows without it
    from PIL import Image

IMAGE = "image"  # a file is one picture, or a few frames (multi-page TIFF, multi-frame DICOM)
VOLUME = "volume"  # a 3-D scan: slices are cut from it along an axis, and a volume summary follows them
KINDS = (IMAGE, VOLUME)

# A folder reader's answer about one folder: it is a scan of this reader, it is not (walk its files), or it looks
# like one but cannot be read as one (the reason is a one-line problem naming the folder).
FOLDER_SCAN, FOLDER_FILES, FOLDER_REFUSED = "scan", "files", "refused"


# ---- size caps ------------------------------------------------------------------------------------------------

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


def check_decoded(size: Decoded, path: str | Path) -> None:
    """Refuse, before decoding, an image that is empty or would decode beyond the caps."""
    if size.width <= 0 or size.height <= 0:
        raise InputImageError(f"image has no pixels ({size.width}x{size.height})", path)
    if size.pixels > MAX_PIXELS:
        raise InputImageError(f"image too large to be a scan ({size.width}x{size.height} = {size.pixels} pixels, "
                              f"limit {MAX_PIXELS}: a decompression bomb?)", path)
    if size.nbytes > MAX_DECODED_BYTES:
        frames = f" x {size.frames} frames" if size.frames > 1 else ""
        raise InputImageError(f"image too large to be a scan (decodes to {size.nbytes} bytes: {size.width}x"
                              f"{size.height}{frames}, {size.channels} channel(s) of {size.bytes_per_sample} "
                              f"byte(s); limit {MAX_DECODED_BYTES}: a decompression bomb?)", path)


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


def check_inflated_size(fh: BinaryIO, path: str | Path) -> int:
    """Inflate a raw-deflate stream from `fh` without keeping it, refusing it once it passes the cap (and a MiB).

    Decoders that inflate a whole stream at once (pydicom for deflated DICOM) would otherwise let a few hundred
    kilobytes claim gigabytes; this pass costs time bounded by the limit and memory bounded by one chunk.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, chunk = 0, 1 << 20
    limit = MAX_DECODED_BYTES + chunk
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


# ---- opening only regular files ------------------------------------------------------------------------------
# A named pipe, device or socket among the scans must never be opened: opening a FIFO for reading blocks until a
# writer appears (forever, in a folder of scans); reading a device may never end (/dev/zero) or have side effects
# (a tape rewinds). So every path is `stat`ed and refused unless it is a regular file, and the file is then opened
# with O_NONBLOCK and checked again with `fstat` on the open descriptor: if the path was swapped for a FIFO between
# the two, the open returns at once instead of blocking, and the second check refuses it. O_NONBLOCK has no effect
# on reads from a regular file.

# S_IS* test -> how a user would name the kind of file. A registry: a new kind is one line.
SPECIAL_KINDS: tuple[tuple[str, str], ...] = (
    ("S_ISFIFO", "a named pipe (FIFO)"),
    ("S_ISCHR", "a character device"),
    ("S_ISBLK", "a block device"),
    ("S_ISSOCK", "a socket"),
    ("S_ISDOOR", "a door"),
    ("S_ISPORT", "an event port"),
    ("S_ISWHT", "a whiteout entry"),
)


def file_kind(mode: int) -> str:
    """What an `st_mode` is, in words ('a regular file', 'a folder', 'a named pipe (FIFO)', ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    for test, words in SPECIAL_KINDS:
        if getattr(stat, test)(mode):
            return words
    return "a special file"


# errno -> the few words a user needs; other errors say their own strerror.
REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOENT: "no such file",
           errno.ELOOP: "too many levels of symbolic links",
           errno.ENOTDIR: "no such file (a part of the path is not a folder)"}


def reason(err: OSError) -> str:
    """An OSError as the few words a user needs ('permission denied', 'no such file')."""
    return REASONS.get(err.errno) or (err.strerror or type(err).__name__).lower()


def stat_regular(path: str | Path) -> os.stat_result:
    """`os.stat` of a path that must be a regular file; anything else is a one-line InputImageError.

    Symbolic links are followed (a link to a scan is a scan); a dangling link is 'no such file'.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise InputImageError("broken symbolic link (its target does not exist)", path) from None
        raise InputImageError(reason(err), path) from None
    if stat.S_ISDIR(info.st_mode):
        raise InputImageError("is a folder, not an image", path)
    if not stat.S_ISREG(info.st_mode):
        raise InputImageError(f"is {file_kind(info.st_mode)}, not a regular file: not opened", path)
    return info


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for binary reading without ever blocking on a FIFO or touching a device."""
    stat_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise InputImageError(reason(err), path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped between stat and open
            raise InputImageError(f"is {file_kind(info.st_mode)}, not a regular file: not opened", path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---- which pictures of a file: frames of multi-frame files, slices of volumes ---------------------------------

FRAME_CHOICES = ("middle", "all")  # or a frame index
SLICE_CHOICES = ("middle", "all")  # or a whole number N


def check_frames(frames: object) -> None:
    """A ConfigError for a `frames` choice that is neither one of FRAME_CHOICES nor a frame index: the caller's
    mistake, said once before any file is read."""
    if not (frames in FRAME_CHOICES or isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0):
        raise ConfigError(f"frames must be one of {FRAME_CHOICES} or a frame index, not {frames!r}")


def select_frames(frames: str | int, count: int, path: str | Path) -> list[int]:
    """The frame indices `frames` ("middle", "all" or an index) picks from a file of `count` frames."""
    check_frames(frames)
    if frames == "all":
        if count > MAX_FRAMES:
            raise InputImageError(f"the file holds {count} frames; classifying all of them is limited to "
                                  f"{MAX_FRAMES} frames a file", path)
        return list(range(count))
    if frames == "middle":
        return [count // 2]
    if not 0 <= frames < count:
        raise InputImageError(f"no frame {frames}: the file holds {count}", path)
    return [frames]


def release_frames(err: BaseException) -> None:
    """Drop the local variables of the finished frames in an exception's traceback (and its causes').

    A decoder that fails half-way leaves its partly decoded image referenced from its frame (Pillow's decoder
    holds the image core): while a batch keeps the error to report it, that memory would stay alive. Cleared
    frames keep their file and line, so --debug still shows the traceback.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


def parse_slices(value: str | int) -> str | int:
    """`--slices`: 'middle', 'all' or a whole number N >= 1."""
    if isinstance(value, str) and value.lower() in SLICE_CHOICES:
        return value.lower()
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"slices must be 'middle', 'all' or a whole number, not {value!r}") from None
    if not 1 <= number <= MAX_FRAMES:
        raise ConfigError(f"the number of slices must be from 1 to {MAX_FRAMES}, not {number}")
    return number


@dataclass(frozen=True)
class ReadOptions:
    """What to take from a file: `frames` of a multi-frame 2-D file ('middle', 'all' or an index); `axis` and
    `slices` ('middle', 'all' or a number N) of a volume. Size limits are the caps (above)."""

    frames: str | int = "middle"
    axis: str = "axial"
    slices: str | int = "middle"


@dataclass(frozen=True)
class Picture:
    """One decoded picture of a scan: 8-bit RGB at its own size, and where it is in its file.

    A frame of a 2-D file has `index` and `count` (1 for ordinary images); a volume's slice also has its `axis`
    (its `index` is the RAS voxel index along the axis' normal, `count` the slices along it) and the warnings the
    input checks gave on its own voxels."""

    image: Image.Image
    index: int = 0
    count: int = 1
    axis: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class Scan:
    """What a reader read: the pictures to classify, in order, and what holds for the whole scan.

    `pictures` is a list for a 2-D file and a generator for a volume (call `close` when stopping early);
    `count` is the frames in the file or the slices along `axis`; `notes` are warnings about the whole scan
    (logged once)."""

    source: str
    reader: str
    kind: str
    pictures: Iterable[Picture]
    count: int = 1
    axis: str | None = None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        getattr(self.pictures, "close", lambda: None)()


def _code(ref: Callable | str) -> Callable:
    """A row's function: itself, or 'package.module:name' imported on first use (a JPEG never loads the volume
    readers)."""
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref


@dataclass(frozen=True)
class Reader:
    """One input type. `suffixes`: lower-case, with their dot, possibly several parts ('.nii.gz').
    `read`, `folder`: a function or 'module:function'. `magic`: (offset, bytes) that mark a file of this type
    whatever its name. `folder(path)`: for readers of folders, FOLDER_SCAN / FOLDER_FILES / FOLDER_REFUSED and a
    reason. `extra` / `modules`: the pip extra that installs what `read` needs, and the top-level modules it brings
    (import names, probed by `tumor-edge env`). `description`: what it reads, for help texts."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path, ReadOptions], Scan] | str
    kind: str = IMAGE
    magic: tuple[int, bytes] | None = None
    folder: Callable[[Path], tuple[str, str | None]] | str | None = None
    extra: str | None = None
    modules: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"reader {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for suffix in self.suffixes:
            if not suffix.startswith(".") or suffix != suffix.lower() or len(suffix) < 2:
                raise ConfigError(f"reader {self.name!r}: suffix {suffix!r} must be lower-case and start with '.'")

    def load(self, path: Path, options: ReadOptions) -> Scan:
        return _code(self.read)(path, options)

    def folder_role(self, folder: Path) -> tuple[str, str | None]:
        return _code(self.folder)(folder) if self.folder is not None else (FOLDER_FILES, None)

    def sniff(self, path: Path) -> bool:
        """Whether a regular file carries this type's magic (special files are never opened)."""
        if self.magic is None:
            return False
        offset, marker = self.magic
        try:
            with open_regular(path) as fh:
                return fh.read(offset + len(marker))[offset:] == marker
        except (InputImageError, OSError):
            return False

    def suffix_of(self, path: str | Path) -> str | None:
        """The longest of this reader's suffixes that `path`'s name ends with (case-insensitive), if any."""
        name = Path(path).name.lower()
        matches = [s for s in self.suffixes if name.endswith(s) and len(name) > len(s)]
        return max(matches, key=len) if matches else None

    def claims(self, path: str | Path) -> bool:
        """Whether this reader reads the file `path`: by suffix or by magic (folders: `folder_role`)."""
        return self.suffix_of(path) is not None or self.sniff(Path(path))
