"""The model-signing library, loaded on first use, and the one hashing configuration both sides share.

Only model-signing's documented, stable modules are used (`model_signing.hashing`, `.signing`, `.verifying`).
"""

from __future__ import annotations

from types import ModuleType

from tumor_edge.errors import MissingExtraError
from tumor_edge.signing import EXTRA, SIGNATURE_FILE


def model_signing() -> ModuleType:
    """The library, or a one-line MissingExtraError naming the extra. pyOpenSSL is checked too: model-signing
    imports it (for certificate signing) without declaring it, so a plain `pip install model-signing` fails on
    first use."""
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
        import OpenSSL  # noqa: F401
    except ModuleNotFoundError as err:
        raise MissingExtraError(f"signed bundles need the `{EXTRA}` extra ({err.name} is not installed): "
                                f"pip install 'tumor-edge[{EXTRA}]'") from err
    return model_signing


def hashing_config():
    """sha256 of every file, one entry per file, no symlinks, nothing ignored but the signature itself: git's
    files (which model-signing skips by default) are signed like any other, so a `.gitignore` dropped into a
    signed bundle fails verification as every other added file does."""
    library = model_signing()
    return (library.hashing.Config()
            .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
            .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False))
