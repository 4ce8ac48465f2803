"""A file that could not be classified, as a value in a result stream: one corrupt scan never stops a batch.

A failure keeps its message and its exception, but none of the local variables of the traceback's frames: they
hold the partly decoded image (60 truncated 9-megapixel JPEGs kept ~2 GB alive in 0.1.0). The traceback itself
(file names and lines, for `--debug`) stays. Its own module, so that image batches (`batch`), volumes
(`volume_run`) and the classifier share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tumor_edge.errors import InputImageError, TumorEdgeError


@dataclass(frozen=True)
class Failure:
    """A file that could not be classified: `message` is the one line to show (it names the file)."""

    source: str
    message: str
    error: BaseException | None = field(default=None, compare=False, repr=False)

    ok = False

    def to_dict(self) -> dict:
        return {"file": self.source, "error": self.message}

    def exception(self) -> TumorEdgeError:
        """The error to raise for callers that stop at the first bad file (an InputImageError unless the
        decoder raised another tumor-edge error)."""
        if isinstance(self.error, TumorEdgeError):
            return self.error
        return InputImageError(self.message.removeprefix(f"{self.source}: "), self.source)


def detached(err: BaseException) -> BaseException:
    """`err` with the frames of every traceback in its cause/context chain cleared of their local variables
    (`traceback.clear_frames`), so keeping the exception keeps no half-decoded image alive; the tracebacks still
    print (file, line, function) for `--debug`."""
    import traceback

    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        traceback.clear_frames(node.__traceback__)
        node = node.__cause__ or node.__context__
    return err


__all__ = ["Failure", "detached"]
