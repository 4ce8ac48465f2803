"""Which rows of the format table a source can be converted to, and the "skipped" rows for those it cannot.

A foreign ONNX model has no route to TFLite in tumor-edge's dependencies (onnx2tf and onnx-tensorflow are not
among them, and a TensorFlow re-implementation of an arbitrary graph would be a second model, not the same one).
Its TFLite rows are therefore reported as skipped in the export table and the parity report: visible, not
failed, not silently absent.
"""

from __future__ import annotations

from collections.abc import Sequence

from tumor_edge.contracts.formats import FORMATS, ModelFormat

SKIPPED = "skipped: "
# (source kind, container) -> why there is no route
NO_ROUTES: dict[tuple[str, str], str] = {("onnx", "tflite"): "no converter route from ONNX to TFLite"}


def no_route(source_kind: str, fmt: ModelFormat) -> str | None:
    """The status of a row this source cannot be converted to ("skipped: ..."), None when it can."""
    why = NO_ROUTES.get((source_kind, fmt.format))
    return SKIPPED + why if why else None


def skipped_row(fmt: ModelFormat, status: str):
    from tumor_edge.export.context import ExportedFile

    row = ExportedFile.of(fmt)
    row.status = status
    return row


def is_skipped(row) -> bool:
    return row.status.startswith(SKIPPED)


def in_table_order(rows: Sequence) -> list:
    order = {f.key: i for i, f in enumerate(FORMATS)}
    return sorted(rows, key=lambda r: order.get(r.key, len(order)))


__all__ = ["NO_ROUTES", "SKIPPED", "in_table_order", "is_skipped", "no_route", "skipped_row"]
