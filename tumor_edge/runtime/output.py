"""How `classify` prints results: a table for people, JSON lines or CSV for scripts. One writer per format in a
registry; each streams a row per result to stdout as it comes, so a pipe sees results before the batch ends."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import TextIO

from tumor_edge.runtime.batch import Failure
from tumor_edge.runtime.classifier import Prediction


def _where(result: Prediction) -> str:
    source = result.source or "<array>"
    if result.frame is not None:
        return f"{source} [frame {result.frame} of {result.frame_count}]"
    return source


class Writer:
    """Streams results to `out`. `failure` returns True when it wrote the failure to `out` itself."""

    def __init__(self, out: TextIO, classes: Sequence[str], top_k: int | None, file_width: int):
        self.out = out
        self.classes = list(classes)
        self.top_k = top_k
        self.file_width = file_width

    def header(self) -> None:
        pass

    def prediction(self, result: Prediction) -> None:
        raise NotImplementedError

    def failure(self, result: Failure) -> bool:
        return False

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class TableWriter(Writer):
    """file, predicted class, probability, then the other classes from most to least likely."""

    def header(self) -> None:
        label_width = max(len(c) for c in self.classes)
        self.label_width = max(label_width, 5)
        self._line(f"{'file':<{self.file_width}}  {'class':<{self.label_width}}  {'prob':>6}  others")

    def prediction(self, result: Prediction) -> None:
        k = self.top_k or len(self.classes)
        others = ", ".join(f"{label} {p:.3f}" for label, p in result.top_k(k)[1:])
        self._line(f"{_where(result):<{self.file_width}}  {result.label:<{self.label_width}}  "
                   f"{result.confidence:6.3f}  {others}".rstrip())


class JsonLinesWriter(Writer):
    """One JSON object a line; failures too ({"file", "error"}), so a script sees every input accounted for."""

    def prediction(self, result: Prediction) -> None:
        data = result.to_dict()
        if self.top_k:
            data["top_k"] = [[label, p] for label, p in result.top_k(self.top_k)]
        self._line(json.dumps(data))

    def failure(self, result: Failure) -> bool:
        self._line(json.dumps(result.to_dict()))
        return True


class CsvWriter(Writer):
    """file, frame, label, confidence, then a probability column per class (fixed columns; failures on
    stderr only)."""

    def _row(self, values: list) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(values)
        self._line(buffer.getvalue())

    def header(self) -> None:
        self._row(["file", "frame", "label", "confidence", *self.classes])

    def prediction(self, result: Prediction) -> None:
        frame = "" if result.frame is None else result.frame
        self._row([result.source, frame, result.label, f"{result.confidence:.6f}",
                   *(f"{result.probabilities[c]:.6f}" for c in self.classes)])


WRITERS: dict[str, Callable[..., Writer]] = {
    "table": TableWriter,
    "json": JsonLinesWriter,
    "csv": CsvWriter,
}
