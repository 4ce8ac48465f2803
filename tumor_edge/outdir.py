"""The one rule for output folders: a non-empty one is refused without force; with force, only the files this
tool writes there are removed, never anything the user keeps beside them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from tumor_edge.errors import OutputExistsError


def prepare_out_dir(out: Path, force: bool, owned: Collection[str] | Callable[[str], bool], what: str) -> Path:
    """Make `out` ready to write: refuse a non-empty folder without `force`; with it, delete the files `owned`
    names (a collection of file names, or a predicate on a name) and keep everything else."""
    out = Path(out)
    is_owned = owned if callable(owned) else (lambda name, names=frozenset(owned): name in names)
    if out.is_symlink() and not out.exists():
        raise OutputExistsError("is a symbolic link to a folder that does not exist; remove it or name another "
                                "folder", out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"{what} folder exists and is not empty; pass --force (force=True in Python) "
                                    "to overwrite it", out)
        for path in out.iterdir():
            if (path.is_file() or path.is_symlink()) and is_owned(path.name):
                path.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputExistsError(f"cannot create the {what} folder ({(err.strerror or str(err)).lower()})",
                                out) from err
    return out
