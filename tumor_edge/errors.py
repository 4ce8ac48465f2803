"""One error family whose message is the single line a user sees; the CLI prints it and exits non-zero."""

from __future__ import annotations

from pathlib import Path

from tumor_edge.text import one_line


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
