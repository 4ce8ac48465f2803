"""This device's private folder of records (the device's engine choice), each carrying a keyed MAC, so a record
is used only if this user's runtime wrote it.

Where: `$TUMOR_EDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/tumor-edge`, else `~/.cache/tumor-edge`. Off with
`TUMOR_EDGE_NO_CACHE=1` or `BackendOptions(cache=False)`. The folder must belong to this user and be writable by
no one else (it is created 0700); otherwise it is refused, never used: a folder others can write is one where
they could plant a record. Its MAC key is a per-user secret in it (`secret.key`, created 0600 with O_EXCL); a
record is JSON with an HMAC-SHA256 over its content, so a record copied from elsewhere, edited, or planted with a
recomputed plain hash fails its check and is ignored (then measured and written again).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from tumor_edge.runtime.backends import BackendOptions

CACHE_DIR_ENV = "TUMOR_EDGE_CACHE_DIR"
NO_CACHE_ENV = "TUMOR_EDGE_NO_CACHE"
APP_DIR = "tumor-edge"
SECRET_FILE = "secret.key"
SECRET_BYTES = 32
MAX_RECORD_BYTES = 1 << 20
MAC_FIELD = "hmac_sha256"


class CacheRefused(PermissionError):
    """The cache folder or its secret cannot be trusted (another owner, writable by others, a link)."""


def cache_enabled(options: BackendOptions) -> bool:
    return options.cache and os.environ.get(NO_CACHE_ENV, "") in ("", "0")


def cache_root(options: BackendOptions | None = None) -> Path:
    """The folder holding this user's records."""
    if options is not None and options.cache_dir:
        return Path(options.cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / APP_DIR


def private_folder(path: Path) -> Path:
    """`path`, created 0700 when missing, after checking it is a folder (not a link) this user owns and no one
    else can write; CacheRefused otherwise."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise CacheRefused(f"cache folder {path} is not a folder (a link?)")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheRefused(f"cache folder {path} belongs to another user")
    if info.st_mode & 0o022:
        raise CacheRefused(f"cache folder {path} is writable by others")
    return path


def folder_for(options: BackendOptions | None, *parts: str) -> Path:
    """A private subfolder of the cache root (each level checked by `private_folder`)."""
    folder = private_folder(cache_root(options))
    for part in parts:
        folder = private_folder(folder / part)
    return folder


def secret(options: BackendOptions | None = None) -> bytes:
    """This user's MAC key, created on first use (0600, O_EXCL: of two first runs, one writes it, both read it)."""
    path = private_folder(cache_root(options)) / SECRET_FILE
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(SECRET_BYTES))
    fd = os.open(path, os.O_RDONLY | nofollow)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if (hasattr(os, "getuid") and info.st_uid != os.getuid()) or info.st_mode & 0o077:
            raise CacheRefused(f"cache secret {path} is not private to this user")
        key = fh.read(SECRET_BYTES + 1)
    if len(key) != SECRET_BYTES:
        raise CacheRefused(f"cache secret {path} is damaged")
    return key


def _mac(key: bytes, body: dict[str, Any]) -> str:
    import hashlib
    import hmac

    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def write_record(path: Path, body: dict[str, Any], options: BackendOptions | None = None) -> None:
    """Write `body` (JSON) with its MAC to `path`, a file in a folder from `folder_for`, atomically (a temporary
    file created O_EXCL in the same folder, then renamed). OSError (CacheRefused included) when it cannot."""
    import tempfile

    data = {**body, MAC_FIELD: _mac(secret(options), body)}
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path, options: BackendOptions | None = None) -> dict[str, Any] | None:
    """The body `write_record` wrote at `path`, or None when it is missing, unreadable, a link, or its MAC does not
    verify with this user's secret (edited, copied from another user, planted)."""
    import hmac

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = json.loads(fh.read(MAX_RECORD_BYTES).decode("utf-8"))
        body = {k: v for k, v in data.items() if k != MAC_FIELD}
        if hmac.compare_digest(str(data.get(MAC_FIELD, "")), _mac(secret(options), body)):
            return body
    except (OSError, ValueError, AttributeError):
        pass
    return None
