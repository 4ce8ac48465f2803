"""What one benchmark run times: the bundle's files keyed by the format table (a new row there is a new
benchmark row), and the training run's Keras model as the reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tumor_edge.bench.targets import KERAS_KEY, Target, engine_missing, engine_of
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata, member_path
from tumor_edge.contracts.formats import format_of
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.errors import ModelError

# The provenance key under which export records the training run folder.
RUN_KEY = "run_dir"
# The file name of a run's Keras model, as the run-folder contract defines it.
KERAS_FILE = RunFolder(Path()).model.name
ONNX_ENGINE = "onnxruntime"


@dataclass
class Subject:
    """The bundle being benchmarked, resolved: metadata, the files to time, and the Keras reference."""

    metadata: BundleMetadata
    bundle_dir: Path | None
    targets: list[Target]
    run_dir: Path | None
    skipped: list[dict[str, str]]

    @property
    def by_key(self) -> dict[str, Target]:
        return {t.key: t for t in self.targets}


def format_key(name: str, fmt: str, precision: str, taken: set[str]) -> str:
    """The format table's key for a bundle file ("onnx-int8"); a file the table does not know is named by its
    container and precision, and a second file of the same key by its file name too."""
    row = format_of(name)
    key = row.key if row is not None else f"{fmt}-{precision}"
    return key if key not in taken else f"{key}:{name}"


def find_run(run: Path | None, metadata: BundleMetadata) -> tuple[Path | None, Path | None]:
    """(run folder or None, its Keras model or None) from `run` (a run folder or its model file) or the
    bundle's provenance."""
    recorded = metadata.provenance.get(RUN_KEY)
    candidate = Path(run) if run is not None else Path(recorded) if isinstance(recorded, str) and recorded else None
    if candidate is not None:
        if candidate.name == KERAS_FILE and candidate.is_file():
            return candidate.parent, candidate
        folder = RunFolder(candidate)
        if folder.model.is_file():
            return folder.path, folder.model
    if run is not None:
        raise ModelError(f"no {KERAS_FILE} here (expected a run folder or its {KERAS_FILE})", run)
    return (candidate if candidate is not None and candidate.is_dir() else None), None


def _bundle_files(path: Path) -> tuple[Path | None, BundleMetadata, list[tuple[str, str, str]]]:
    """(bundle folder, metadata, [(file name, container, precision)]) for a bundle folder or one of its files."""
    if path.is_dir():
        metadata = BundleMetadata.read(path)
        return path, metadata, [(name, e.format, e.precision) for name, e in metadata.models.items()]
    if (path.parent / METADATA_FILE).is_file():
        bundle_dir, metadata = path.parent, BundleMetadata.read(path.parent)
    elif engine_of(path) == ONNX_ENGINE:  # a lone .onnx carries its metadata inside
        from tumor_edge.runtime import read_onnx_metadata

        bundle_dir, metadata = None, read_onnx_metadata(path)
    else:
        raise ModelError(f"no {METADATA_FILE} beside this model file; pass the bundle folder", path)
    entry = metadata.models.get(path.name)
    row = format_of(path.name)
    fmt = entry.format if entry else row.format if row else path.suffix.lstrip(".").lower()
    precision = entry.precision if entry else row.precision if row else "fp32"
    return bundle_dir, metadata, [(path.name, fmt, precision)]


def resolve_subject(model: Path, run: Path | None = None, keras: bool = True,
                    formats: list[str] | None = None) -> Subject:
    """The targets of a benchmark of `model` (a bundle folder, one of its files, or a lone .onnx with embedded
    metadata); formats whose engine is not installed here are listed in `skipped`, not failed."""
    path = Path(model)
    if not path.exists():
        raise ModelError("no such bundle or model file", path)
    bundle_dir, metadata, files = _bundle_files(path)
    base = path if path.is_dir() else path.parent
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []
    taken: set[str] = set()
    for name, fmt, precision in files:
        file = member_path(base, name) if bundle_dir is not None else path
        key = format_key(name, fmt, precision, taken)
        taken.add(key)
        if not file.is_file():
            raise ModelError(f"bundle lists {name} but the file is missing", base)
        missing = engine_missing(file)
        if missing:
            skipped.append({"format": key, "file": name, "reason": missing})
            continue
        targets.append(Target(key, file, engine_of(file), precision))
    run_dir, keras_file = find_run(run, metadata)
    if keras:
        if keras_file is None:
            skipped.append({"format": KERAS_KEY, "file": KERAS_FILE,
                            "reason": "the training run is not at hand (pass --run RUN)"})
        elif engine_missing(keras_file):
            skipped.append({"format": KERAS_KEY, "file": keras_file.name, "reason": engine_missing(keras_file)})
        else:
            targets.insert(0, Target(KERAS_KEY, keras_file, KERAS_KEY, "fp32"))
    if formats is not None:
        available = {t.key for t in targets} | {s["format"] for s in skipped}
        unknown = [f for f in formats if f not in available]
        if unknown:
            raise ModelError(f"format(s) {', '.join(unknown)} not in this bundle; it has "
                             f"{', '.join(sorted(available))}", path)
        targets = [t for t in targets if t.key in formats]
        skipped = [s for s in skipped if s["format"] in formats]
    if not targets:
        raise ModelError("nothing to benchmark here: " + "; ".join(f"{s['format']}: {s['reason']}"
                                                                     for s in skipped), path)
    return Subject(metadata, bundle_dir, targets, run_dir, skipped)
