"""How `classify` prints results: a table for people, JSON lines or CSV for scripts, one writer per format,
each streaming a row per result as it comes.

Output stays well-formed whatever the names: names pass the one escaping rule (`errors.one_line`), so a row is one
line and never drives the terminal; CSV cells never start a spreadsheet formula; JSON never holds a bare NaN.
A failed write (disk full) becomes an `OutputError`. Every JSON and CSV row names the model file and engine that
produced it: the device picks the file by measurement, so a row must say which one it was.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from tumor_edge.errors import TumorEdgeError, one_line, valid_unicode
from tumor_edge.runtime.postprocess import Failure, Prediction

if TYPE_CHECKING:
    from tumor_edge.runtime.volume import VolumeSummary

# OWASP "CSV injection": a cell starting with one of these is a formula to Excel, LibreOffice and Sheets (OWASP's
# other two, tab and carriage return, never start a cell: `one_line` escapes them).
FORMULA_STARTS = ("=", "+", "-", "@")


class OutputError(TumorEdgeError):
    """Results could not be written (disk full, a closed file); the batch cannot usefully go on."""


def csv_cell(value: object) -> str:
    """A text cell that a spreadsheet shows as text, on one line: names escaped by the one rule (`one_line`), then
    OWASP's leading single quote before a formula start."""
    text = one_line(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def failure_reason(result: Failure) -> str:
    """The failure's message without the file name it starts with (the file has its own column)."""
    prefix = f"{result.source}: "
    return result.message[len(prefix):] if result.message.startswith(prefix) else result.message


def slice_label(axis: str, index: int | None, count: int | None) -> str:
    """'axial 45/120': slice 45 (0-based, along the axis in RAS order) of the volume's 120."""
    return f"{axis} {index}/{count}"


def summary_label(summary: VolumeSummary) -> str:
    n = len(summary.slices)
    return f"volume: {summary.axis}, {n} slice{'s' if n != 1 else ''}"


def _where(result: Prediction) -> str:
    source = one_line(result.source)
    if result.axis is not None:
        return f"{source} [{slice_label(result.axis, result.frame, result.frame_count)}]"
    if result.frame is not None:
        return f"{source} [frame {result.frame} of {result.frame_count}]"
    return source


class Writer:
    """Streams results to `out`; a failure is a row only where the format has one (JSON, CSV)."""

    def __init__(self, out: TextIO, classes: Sequence[str], top_k: int | None, file_width: int, notice: str = "",
                 model: tuple[str, str] = ("", "")):
        self.out = out
        self.classes = list(classes)
        self.top_k = top_k
        self.file_width = file_width
        self.notice = notice  # the research-use notice each volume summary carries
        self.model_file, self.engine = model  # what produced every row: named in each machine-readable row

    def header(self) -> None:
        pass

    def prediction(self, result: Prediction) -> None:
        """One picture's row (a volume's slice: `result.axis` is set, `result.frame` is the slice index)."""
        raise NotImplementedError

    def volume_summary(self, summary: VolumeSummary) -> None:
        raise NotImplementedError

    def failure(self, result: Failure) -> None:
        pass

    def _line(self, text: str) -> None:
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (`| head`): the command exits quietly
        except OSError as err:
            raise OutputError(f"cannot write the results ({(err.strerror or str(err)).lower()})") from err


class TableWriter(Writer):
    """file, predicted class, probability, then the other classes from most to least likely."""

    def header(self) -> None:
        label_width = max(len(c) for c in self.classes)
        self.label_width = max(label_width, 5)
        self._line(f"{'file':<{self.file_width}}  {'class':<{self.label_width}}  {'prob':>6}  others")

    def prediction(self, result: Prediction) -> None:
        k = self.top_k or len(self.classes)
        others = ", ".join(f"{one_line(label)} {p:.3f}" for label, p in result.top_k(k)[1:])
        label, prob = ("-", "     -") if result.abstained else (one_line(result.label), f"{result.confidence:6.3f}")
        # Warnings stay on the result's own row: one line per result, whatever a pipe or a reader counts.
        warned = f"  [warning: {one_line('; '.join(result.warnings))}]" if result.warnings else ""
        self._line(f"{_where(result):<{self.file_width}}  {label:<{self.label_width}}  {prob}  "
                   f"{others}".rstrip() + warned)

    def volume_summary(self, summary: VolumeSummary) -> None:
        k = self.top_k or len(self.classes)
        ranked = sorted(summary.probabilities.items(), key=lambda kv: kv[1], reverse=True)
        if summary.label is None:
            label, prob, others = "-", "     -", ""
        else:
            label, prob = one_line(summary.label), f"{summary.confidence:6.3f}"
            others = ", ".join([f"{one_line(c)} {p:.3f}" for c, p in ranked if c != summary.label][:k - 1])
        notes = "; ".join([summary.support_text(), *summary.warnings, self.notice])
        where = f"{one_line(summary.source)} [{summary_label(summary)}]"
        self._line(f"{where:<{self.file_width}}  {label:<{self.label_width}}  {prob}  {others}".rstrip()
                   + f"  [{one_line(notes)}]")


class JsonLinesWriter(Writer):
    """One JSON object a line; failures too ({"file", "error"}), so a script sees every input accounted for.
    NaN or infinity is refused (strict JSON parsers reject them): such a picture's row is a failure."""

    def _json(self, data: dict, produced: bool = True) -> None:
        data["file"] = valid_unicode(data.get("file"))
        if produced:
            data.update(model_file=valid_unicode(self.model_file), engine=self.engine)
        self._line(json.dumps(data, allow_nan=False))

    def prediction(self, result: Prediction) -> None:
        data = result.to_dict()
        if self.top_k:
            data["top_k"] = [[label, p] for label, p in result.top_k(self.top_k)]
        self._json(data)

    def volume_summary(self, summary: VolumeSummary) -> None:
        self._json(summary.to_dict(self.notice))

    def failure(self, result: Failure) -> None:
        self._json(result.to_dict(), produced=False)


class CsvWriter(Writer):
    """file, frame, label, confidence, a probability column per class, warnings (joined by "; "), then error
    (empty unless the file failed). Cells with a comma, quote, CR or LF are quoted (RFC 4180), so every name
    stays one cell. A volume's slice rows say `axial 45/120` in `frame`; its summary row says which slices carry
    its class there (`volume: axial, 9 slices; glioma in axial slices ...`), the notice in `warnings`."""

    def _row(self, values: list) -> None:
        buffer = io.StringIO()
        # QUOTE_MINIMAL quotes a cell holding any character of the line terminator: with "\r\n" both CR and LF
        # (with "" neither, and a name with a newline split the row).
        csv.writer(buffer, lineterminator="\r\n").writerow(values)
        self._line(buffer.getvalue()[:-2])

    def header(self) -> None:
        self._row(["file", "frame", "label", "confidence", *(csv_cell(c) for c in self.classes), "warnings",
                   "error", "model_file", "engine"])

    def prediction(self, result: Prediction) -> None:
        frame = "" if result.frame is None else result.frame
        if result.axis is not None:
            frame = slice_label(result.axis, result.frame, result.frame_count)
        label, confidence = ("", "") if result.abstained else (csv_cell(result.label), f"{result.confidence:.6f}")
        self._row([csv_cell(result.source), frame, label, confidence,
                   *(f"{result.probabilities[c]:.6f}" for c in self.classes),
                   csv_cell("; ".join(result.warnings)), "", *self._produced()])

    def _produced(self) -> list[str]:
        return [csv_cell(self.model_file), csv_cell(self.engine)]

    def volume_summary(self, summary: VolumeSummary) -> None:
        label = "" if summary.label is None else csv_cell(summary.label)
        confidence = "" if summary.confidence is None else f"{summary.confidence:.6f}"
        self._row([csv_cell(summary.source), csv_cell(f"{summary_label(summary)}; {summary.support_text()}"),
                   label, confidence, *(f"{summary.probabilities[c]:.6f}" for c in self.classes),
                   csv_cell("; ".join([*summary.warnings, self.notice])), "", *self._produced()])

    def failure(self, result: Failure) -> None:
        self._row([csv_cell(result.source), "", "", "", *([""] * len(self.classes)), "",
                   csv_cell(failure_reason(result)), "", ""])


WRITERS: dict[str, Callable[..., Writer]] = {
    "table": TableWriter,
    "json": JsonLinesWriter,
    "csv": CsvWriter,
}
