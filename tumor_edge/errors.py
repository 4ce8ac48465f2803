"""One error type whose message is the single line a user sees; the CLI prints it and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class TumorEdgeError(Exception):
    """A problem the user can fix. ``str(err)`` is the one line shown, naming the file when there is one."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class InputImageError(TumorEdgeError):
    """An image or scan that cannot be read; batches report and skip it."""


class ModelError(TumorEdgeError):
    """A model file or bundle that is missing, unreadable or inconsistent with its metadata."""


class DatasetError(TumorEdgeError):
    """A dataset folder that does not have the expected layout."""


class ParityError(TumorEdgeError):
    """An exported file whose results differ from the Keras model's beyond the tolerances."""

    exit_code = 3


class OutputExistsError(TumorEdgeError):
    """Refusal to overwrite something the user made without --force."""
