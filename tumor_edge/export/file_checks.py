"""Every check of an exported file, on one opening of it through the runtime: its parity against Keras, its
heatmap parity, and its reference record for `tumor-edge verify`.

The file is opened from its bytes with the bundle's metadata as export holds it in memory (`open_backend` with
the sha256 export just computed, then `Classifier`), so metadata.json is written once, when everything it
records is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumor_edge.contracts.bundle import BundleMetadata, ReferenceSet
from tumor_edge.errors import MissingExtraError, TumorEdgeError
from tumor_edge.export.config import ExportConfig
from tumor_edge.export.context import ExportedFile
from tumor_edge.export.parity import FileParity, ParityInputs, evaluate_file
from tumor_edge.export.reference import add_outputs, new_reference
from tumor_edge.export.trust_outputs import heatmap_correlation
from tumor_edge.progress import progress


@dataclass
class HeatmapInputs:
    """The test pixels (at the bundle's preprocessing) and the Keras model's heatmaps on them."""

    pixels: np.ndarray
    reference: np.ndarray


@dataclass
class FileChecks:
    parity: list[FileParity] = field(default_factory=list)  # empty without parity
    heatmaps: dict[str, float | None] | None = None  # file -> mean correlation; None without heatmap parity
    reference: ReferenceSet | None = None


def check_files(out: Path, rows: Sequence[ExportedFile], metadata: BundleMetadata, config: ExportConfig,
                parity: ParityInputs | None, heatmaps: HeatmapInputs | None) -> FileChecks:
    """Open each converted file once and run every check on it."""
    from tumor_edge.runtime import Classifier, open_backend

    done = [r for r in rows if r.ok]
    result = FileChecks(heatmaps={} if heatmaps is not None else None)
    result.reference, images = new_reference(metadata)
    for row in progress(done, "checking exported files", length=len(done), enabled=config.show_progress):
        path = out / row.file
        try:
            clf = Classifier(open_backend(path), metadata)
        except TumorEdgeError as err:  # parity reports it; verify says the file has no reference
            clf = err
        if parity is not None:
            result.parity.append(evaluate_file(clf, path, row.format, row.precision, parity, metadata.classes,
                                               config.thresholds, config.batch_size))
        if isinstance(clf, BaseException):
            if not isinstance(clf, MissingExtraError) and parity is None:
                raise clf
            continue
        if heatmaps is not None and "heatmap" in clf.output_specs:
            result.heatmaps[row.file] = heatmap_correlation(clf, heatmaps.reference, heatmaps.pixels,
                                                            config.batch_size)
        add_outputs(result.reference, row.file, clf, images)
    return result


__all__ = ["FileChecks", "HeatmapInputs", "check_files"]
