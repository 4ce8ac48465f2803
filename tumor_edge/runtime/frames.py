"""Which pictures of a file to classify: frames of multi-frame files (a multi-frame DICOM, a multi-page TIFF, an
animated GIF), slices of volumes (`--slices`); and how a decoder that failed half-way lets go of what it decoded.

Shared by every decoder (image.py for Pillow's formats, dicom.py for DICOM), so neither imports the other for it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from tumor_edge.errors import ConfigError, InputImageError
from tumor_edge.runtime.caps import MAX_FRAMES

# Which frames of a multi-frame file to classify (or a frame index).
FRAME_CHOICES = ("middle", "all")

SLICE_CHOICES = ("middle", "all")  # or a whole number N

__all__ = ["FRAME_CHOICES", "SLICE_CHOICES", "check_frames", "parse_slices", "release_frames", "select_frames"]


def check_frames(frames: object) -> None:
    """Refuse a `frames` choice that is neither one of FRAME_CHOICES nor a frame index (a ConfigError: the
    caller's mistake, said once before any file is read)."""
    if not (frames in FRAME_CHOICES or isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0):
        raise ConfigError(f"frames must be one of {FRAME_CHOICES} or a frame index, not {frames!r}")


def select_frames(frames: str | int, count: int, path: str | Path) -> list[int]:
    """The frame indices `frames` ("middle", "all" or an index) picks from a file of `count` frames."""
    if frames == "all":
        if count > MAX_FRAMES:
            raise InputImageError(f"the file holds {count} frames; classifying all of them is limited to "
                                  f"{MAX_FRAMES} frames a file", path)
        return list(range(count))
    if frames == "middle":
        return [count // 2]
    if isinstance(frames, int) and not isinstance(frames, bool):
        if not 0 <= frames < count:
            raise InputImageError(f"no frame {frames}: the file holds {count}", path)
        return [frames]
    raise ValueError(f"frames must be one of {FRAME_CHOICES} or a frame index, not {frames!r}")


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
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.lower() in SLICE_CHOICES:
        return value.lower()
    else:
        try:
            number = int(str(value))
        except ValueError:
            raise ConfigError(f"slices must be 'middle', 'all' or a whole number, not {value!r}") from None
    if not 1 <= number <= MAX_FRAMES:
        raise ConfigError(f"the number of slices must be from 1 to {MAX_FRAMES}, not {number}")
    return number
