"""Open only regular files: a named pipe, device or socket among the scans must never be opened.

Opening a FIFO for reading blocks until a writer appears (forever, in a folder of scans); reading a device may
never end (/dev/zero, /dev/urandom) or have side effects (a tape rewinds). So every path is `stat`ed and refused
unless it is a regular file, and the file is then opened with O_NONBLOCK and checked again with `fstat` on the
open descriptor: if the path was swapped for a FIFO between the two, the open returns at once instead of
blocking, and the second check refuses it. O_NONBLOCK has no effect on reads from a regular file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from tumor_edge.errors import InputImageError

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


def read_head(path: str | Path, size: int) -> bytes:
    """The first `size` bytes of a regular file, b'' for anything that is not one or cannot be read."""
    try:
        with open_regular(path) as fh:
            return fh.read(size)
    except (InputImageError, OSError):
        return b""
