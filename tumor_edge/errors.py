"""One error family whose message is the single line a user sees; the CLI prints it and exits non-zero. And
the one rule for showing text that others chose (file names, class names, paths) on a terminal, in a log line or
in a CSV cell, which every such message follows: it stays one line and shows what is really there.

C0 and C1 controls, line separators and bidirectional controls (U+202E shows `scan<U+202E>gpj.exe` as
`scanexe.jpg`) act instead of showing: each becomes a visible backslash escape, as do undecodable file-name bytes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_BIDI = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES = ({c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
            | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
            | {c: f"\\u{c:04x}" for c in (*_BIDI, 0x2028, 0x2029)})


def valid_unicode(text: str | None) -> str:
    """Text that encodes as UTF-8: undecodable file-name bytes become `\\xNN`; None (an in-memory image) becomes
    `<array>`."""
    if text is None:
        return "<array>"
    with contextlib.suppress(UnicodeEncodeError):
        text.encode("utf-8")
        return text
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file-name decoding makes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: object) -> str:
    """`text` (a str, a path, None) for a terminal, a log line or a CSV cell: valid UTF-8, every control
    character escaped (see the module's docstring)."""
    return valid_unicode(None if text is None else str(text)).translate(_ESCAPES)


class TumorEdgeError(Exception):
    """A problem the user can fix. ``str(err)`` is the one line shown, naming the file, escaped so a name cannot
    split or drive it (`reason` keeps the message as given)."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.reason = message
        super().__init__(one_line(f"{path}: {message}" if path is not None else message))


class ConfigError(TumorEdgeError, ValueError):
    """An option, argument or configuration value that is not allowed (also a ValueError for library callers)."""

    exit_code = 2


class InputImageError(TumorEdgeError):
    """An image or scan that cannot be read; batches report and skip it."""


class ModelError(TumorEdgeError):
    """A model file or bundle that is missing, unreadable or inconsistent with its metadata."""


class BundleIntegrityError(ModelError):
    """A bundle whose files do not match what its metadata promises (hash, size, path outside the bundle)."""


class SignatureError(BundleIntegrityError):
    """A bundle whose signature is missing, unreadable, made with another key, or does not match its files."""


class TrustSettingError(ConfigError):
    """A trust setting that cannot be used (a missing or unreadable public key, an empty $TUMOR_EDGE_TRUST, an
    unknown pin): nothing runs, exit status 1 (the commands that run bundles keep 2 for "some inputs failed")."""

    exit_code = 1


class MissingExtraError(TumorEdgeError):
    """A command or format needs an optional dependency that is not installed; the message names the extra."""


class DatasetError(TumorEdgeError):
    """A dataset folder that does not have the expected layout."""


class ParityError(TumorEdgeError):
    """An exported file whose results differ from the Keras model's beyond the tolerances."""

    exit_code = 3


class OutputExistsError(TumorEdgeError):
    """Refusal to overwrite something the user made without force."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's text (third-party errors run to pages), else its type name."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(err).__name__
