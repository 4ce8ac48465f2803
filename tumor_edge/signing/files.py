"""The files a signature covers: every regular file under the bundle folder, at any depth, but the signature.

Checked before model-signing runs so that a symlink or a special file is one line naming it (model-signing
would refuse a symlink with its own wording, and skip a FIFO silently).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tumor_edge.signing import SIGNATURE_FILE, SignatureError


def bundle_files(bundle: Path) -> list[str]:
    """Every file's path relative to `bundle` ("/"-separated, as model-signing names them), sorted; raises
    SignatureError for a symlink or anything that is neither a regular file nor a folder."""
    found = []
    for root, dirs, names in os.walk(bundle, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise SignatureError("a symbolic link: a signed bundle holds plain files only", path)
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SignatureError("not a regular file (a FIFO, socket or device): a signed bundle holds plain "
                                     "files only", path)
            if stat.S_ISREG(mode):
                found.append(path.relative_to(bundle).as_posix())
    return sorted(name for name in found if name != SIGNATURE_FILE)
