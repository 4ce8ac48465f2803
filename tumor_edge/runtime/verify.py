"""What `tumor-edge verify BUNDLE [--data DIR]` checks: is this bundle intact, and does this device reproduce it?

Schema and integrity (tumor_edge.contracts.bundle); soundness and reproduction on regenerated reference images
(tumor_edge.runtime.choice: different CPUs or onnxruntime versions can change int8 results), every other recorded
output role relative to its recorded range (its units are the model's, not probabilities); with --data, accuracy
on local labelled scans within export's parity tolerance. Each file's reproduce result is recorded on this device
(a failed file is never chosen here again), and once every check passed the files are timed and the choice
recorded for classify, serve and bench. A listed file absent here, or whose engine is not installed, is listed
under "not checked here" and fails only with `--strict`.

`Bundle` is the runtime's public handle on a bundle folder: its validated metadata, its files' checks, a
Classifier on one of them, and these checks.

`measure_ood_rates`: how often a bundle's out-of-distribution warnings fire on generated sets that are not brain
MRI slices and on held-out scans that are, through the runtime's own prediction path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import SCORES, BundleMetadata, member_path, read_model_files
from tumor_edge.errors import MissingExtraError, TumorEdgeError
from tumor_edge.runtime.backends import BackendOptions, engine_row
from tumor_edge.runtime.choice import (
    CAP,
    FLOORS,
    measure_choice,
    parity_row,
    record_checks,
    reference_images,
    reference_role_outputs,
    reproduce,
    soundness,
)
from tumor_edge.runtime.classifier import Classifier, decode_file

# Other output roles (the heatmap, the OOD features): largest |difference| divided by the recorded values' range
# (max - min), per precision. Neither is a probability, so an absolute bound would mean something different for
# every model. One int8 rounding step of an output is about 1/255 of its range; 0.1 allows kernels that round
# differently along the way and still catches a map or feature vector that is not the recorded one.
ROLE_TOLERANCE: dict[str, float] = {"fp32": 1e-3, "fp16": 1e-2, "int8": 0.1}
DEFAULT_MAX_ACCURACY_DROP = 1.0  # points, when the bundle's parity record names none


@dataclass
class VerifyReport:
    """What verify found: report lines (stdout) and problems (one line each; any problem fails)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # per model file: agreement, max_abs_diff, accuracy
    not_checked: dict[str, str] = field(default_factory=dict)  # listed file -> why this device could not check it
    choice: object | None = None  # the measured fastest file (runtime.choice.EngineChoice), once all checks passed
    checks: dict = field(default_factory=dict)  # file -> its reproduce result here (runtime.choice.Check)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bundle(bundle_dir: str | Path, data: str | Path | None = None, tolerance: float | None = None,
                  batch_size: int = 16, strict: bool = False, choose: bool = True,
                  threads: int | None = None, trust: object | None = None) -> VerifyReport:
    """Run every check this device can; never raises for a bad bundle (each problem is a line of the report)."""
    bundle_dir = Path(bundle_dir)
    report = VerifyReport()
    try:
        metadata = BundleMetadata.read(bundle_dir)
    except TumorEdgeError as err:
        report.problems.append(str(err))
        return report
    report.lines.append(f"schema: ok ({len(metadata.classes)} classes, {len(metadata.models)} files)")
    runnable = [name for name in metadata.models if _check_integrity(bundle_dir, name, metadata, report)]
    if not metadata.models:
        report.problems.append(f"{bundle_dir}: the bundle lists no models")
    options = BackendOptions(threads=threads, trust=trust)
    _check_reference(bundle_dir, metadata, runnable, tolerance, report, options)
    if data is not None:
        _check_data(bundle_dir, metadata, runnable, Path(data), batch_size, report, options)
    for name, why in report.not_checked.items():
        if strict:
            report.problems.append(f"{bundle_dir / name}: not checked here: {why} (--strict requires every file)")
        else:
            report.lines.append(f"not checked here: {name}: {why}")
    if metadata.models and not report.problems and not any(f.get("reproduced") for f in report.files.values()):
        report.problems.append(f"{bundle_dir}: no model of this bundle could be checked on this device")
    if choose:
        _choose(bundle_dir, metadata, options, report)
    return report


def _choose(bundle_dir: Path, metadata, options, report: VerifyReport) -> None:
    """Record this device's reproduce results (passed or failed: a failed file never runs here again), then, when
    every check passed, time the files this device may run and record the choice (runtime.choice)."""
    record_checks(metadata, report.checks, options)
    if report.problems or not report.checks:
        return
    try:
        report.choice = measure_choice(bundle_dir, functools.partial(Classifier.from_bundle, bundle_dir,
                                                                     options=options), metadata, options)
    except TumorEdgeError as err:
        report.lines.append(f"device choice: not measured ({err.reason})")
        return
    report.lines.append(f"device choice: {report.choice.describe()}")


def _check_integrity(bundle_dir: Path, name: str, metadata, report: VerifyReport) -> bool:
    """Hash one listed file if it is here; True when this device can also run it. An absent file or a missing
    engine is recorded in report.not_checked (once), a failed check in report.problems."""
    try:
        path = member_path(bundle_dir, name)  # a name that leaves the folder is a problem, present or not
        if not os.path.lexists(path):
            report.not_checked[name] = "not in this copy of the bundle"
            return False
        read_model_files(bundle_dir, name, metadata)
    except TumorEdgeError as err:
        report.problems.append(str(err))
        return False
    report.lines.append(f"integrity: ok  {name} (sha256 {metadata.models[name].sha256[:12]}…)")
    try:
        engine_row(path)
    except MissingExtraError as err:
        report.not_checked[name] = f"{err.reason} (its sha256 was checked)"
        return False
    except TumorEdgeError as err:
        report.problems.append(str(err))
        return False
    return True


def _check_reference(bundle_dir: Path, metadata, names: list[str], tolerance: float | None,
                     report: VerifyReport, options) -> None:
    reference = metadata.reference
    if reference is None:
        report.problems.append(f"{bundle_dir}: no reference outputs recorded: this device's results cannot be "
                               "compared with the export machine's")
        return
    try:
        images = reference_images(reference, metadata)
    except TumorEdgeError as err:
        report.problems.append(f"{bundle_dir}: {err}")
        return
    made_on = reference.machine.get("cpu") or reference.machine.get("isa") or "the export machine"
    report.lines.append(f"reference: {reference.count} generated images ({reference.generator}, seed "
                        f"{reference.seed}); recorded on {made_on}")
    for precision in sorted({metadata.models[name].precision for name in names}):
        floor = FLOORS.get(precision, FLOORS["fp32"])
        report.lines.append(f"reference: {precision} tolerance floor {floor.value:g} ({floor.source}), cap {CAP:g}")
    declared = [role for role in metadata.outputs if role != SCORES]
    if declared and not reference.roles:
        report.lines.append(f"reference: class scores only (outputs {', '.join(declared)} were not recorded by the "
                            "tumor-edge that exported this bundle)")
    for name in names:
        path = bundle_dir / name
        if reference.outputs.get(name) is None:
            report.problems.append(f"{path}: no reference outputs recorded for this file")
            continue
        sound = soundness(name, metadata)
        report.files.setdefault(name, {})["soundness"] = sound.figures
        if not sound.ok:
            report.problems.append(f"{path}: not sound: {sound.line}")
            continue
        report.lines.append(f"sound: ok  {sound.line}")
        try:
            classifier = Classifier.from_bundle(bundle_dir, model_file=name, options=options)
            outputs = reference_role_outputs(classifier, images)
        except TumorEdgeError as err:
            report.problems.append(str(err))
            continue
        check = reproduce(name, outputs[SCORES], metadata, tolerance)
        if tolerance is None:  # an explicit tolerance is the user's question, not the device's record
            report.checks[name] = check
        report.files[name].update(check.figures)
        if check.ok:
            report.files[name]["reproduced"] = True
            report.lines.append(f"reproduce: ok  {check.line}")
        else:
            report.problems.append(f"{path}: this device does not reproduce the export machine's outputs: "
                                   f"{check.line}")
        if reference.roles:
            _check_roles(path, metadata.models[name].precision, reference.roles.get(name, {}), outputs, declared,
                         report)


def role_difference(recorded: dict, got) -> tuple[float, float]:
    """(largest |difference|, that divided by the recorded values' range) for one role's recorded images."""
    want = np.asarray(recorded["values"], np.float64).reshape(recorded["shape"])
    have = np.asarray(got, np.float64)[:want.shape[0]]
    if have.shape != want.shape:
        return float("inf"), float("inf")
    diff = float(np.max(np.abs(have - want))) if want.size else 0.0
    spread = float(np.ptp(want)) if want.size else 0.0
    if spread > 0:
        return diff, diff / spread
    return diff, 0.0 if diff <= 1e-6 else float("inf")  # constant recorded values: only a tiny change is equal


def _check_roles(path: Path, precision: str, recorded: dict, outputs: dict, declared: list[str],
                 report: VerifyReport) -> None:
    """Each recorded non-score role of one file against this device's outputs."""
    for role in declared:
        entry = recorded.get(role)
        if entry is None:
            report.lines.append(f"reproduce: --  {path.name} {role}: no reference recorded for this output")
            continue
        if role not in outputs:
            report.problems.append(f"{path}: the model gives no '{role}' output, but the bundle recorded one")
            continue
        diff, relative = role_difference(entry, outputs[role])
        limit = ROLE_TOLERANCE.get(precision, ROLE_TOLERANCE["fp32"])
        report.files.setdefault(path.name, {}).setdefault("roles", {})[role] = {
            "max_abs_diff": diff, "relative_diff": relative, "limit": limit, "images": entry["shape"][0]}
        line = (f"{path.name} {role}: max |Δ| {diff:.2g}, {relative:.2g} of its range on {entry['shape'][0]} images "
                f"(limit {limit:g})")
        if bool(np.isfinite(relative)) and relative <= limit:
            report.lines.append(f"reproduce: ok  {line}")
        else:
            report.problems.append(f"{path}: this device does not reproduce the export machine's outputs: {line}")


def labelled_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int], list[str]]:
    """(scans, labels, problems) of a labelled folder: ROOT/Testing/<class>/... or ROOT/<class>/..., sorted.
    A scan is what the readers' registry claims: a regular file (a FIFO or device is never opened; hidden names
    skipped) or a folder a folder reader reads as one scan (a DICOM series), which is then not walked."""
    from tumor_edge.runtime.readers import folder_role, is_scan_file
    from tumor_edge.runtime.readers.base import FOLDER_SCAN

    base = root / "Testing" if (root / "Testing").is_dir() else root
    problems: list[str] = []
    if not base.is_dir():
        return [], [], [f"{root}: not a folder"]
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        problems.append(f"{base}: folders {', '.join(unknown)} are not classes of this bundle "
                        f"({', '.join(classes)})")
    files, labels = [], []

    def unreadable(err: OSError) -> None:  # an unreadable subfolder is a problem, never skipped silently
        problems.append(f"{err.filename}: cannot read ({err.strerror})")

    for folder in [f for f in folders if f.name in classes]:
        for dirpath, dirs, names in os.walk(folder, onerror=unreadable):
            if folder_role(Path(dirpath))[1] == FOLDER_SCAN:  # a series folder: one labelled volume
                dirs[:] = []
                files.append(Path(dirpath))
                labels.append(classes.index(folder.name))
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(dirpath) / name
                if path.is_file() and is_scan_file(path):  # follows links; False for FIFOs, sockets, devices
                    files.append(path)
                    labels.append(classes.index(folder.name))
    if not files:
        problems.append(f"{base}: no labelled scans (expected <class>/ folders named {', '.join(classes)})")
    return files, labels, problems


def _predicted(clf, files: list[Path], batch_size: int) -> tuple[list[int], list[str]]:
    """(a class index per scan, -1 when it could not be classified; the failures' messages): an image's own
    prediction, a volume's summary label (its slice rows are not scans of their own)."""
    from tumor_edge.runtime.postprocess import VolumeSummary
    from tumor_edge.runtime.readers import is_volume

    volumes = {str(f) for f in files if is_volume(f)}
    predicted: list[int] = []
    unreadable: list[str] = []
    for result in clf.iter_results(files, batch_size=batch_size):
        if isinstance(result, VolumeSummary):
            predicted.append(clf.classes.index(result.label) if result.label is not None else -1)
        elif not result.ok:
            predicted.append(-1)
            unreadable.append(result.message)
        elif result.source not in volumes:
            predicted.append(result.index)
    return predicted, unreadable


def _check_data(bundle_dir: Path, metadata, names: list[str], root: Path, batch_size: int,
                report: VerifyReport, options) -> None:
    files, labels, problems = labelled_files(root, list(metadata.classes))
    report.problems.extend(problems)
    if not files:
        return
    truth = np.asarray(labels)
    for name in names:
        try:
            clf = Classifier.from_bundle(bundle_dir, model_file=name, options=options)
        except TumorEdgeError as err:
            report.problems.append(str(err))
            continue
        predicted, unreadable = _predicted(clf, files, batch_size)
        accuracy = float(np.mean(np.asarray(predicted) == truth))
        report.files.setdefault(name, {}).update(accuracy=accuracy, n_images=len(files))
        line = f"{name}: accuracy {100 * accuracy:.1f}% on {len(files)} local scans"
        report.problems.extend(f"unreadable scan: {message}" for message in unreadable[:5])
        if len(unreadable) > 5:
            report.problems.append(f"{root}: {len(unreadable) - 5} more unreadable scans")
        parity, row = parity_row(name, metadata)
        drop = (parity.get("thresholds") or {}).get("max_accuracy_drop", DEFAULT_MAX_ACCURACY_DROP)
        before = row.get("accuracy")
        if isinstance(before, (int, float)):
            line += f" (export measured {100 * before:.1f}%, tolerance {drop:g} points)"
            if 100 * (before - accuracy) > drop + 1e-9:
                report.problems.append(f"{bundle_dir / name}: {line}")
                continue
        report.lines.append(f"data: ok  {line}")


# ---------------------------------------------------------------------------------------------- OOD warning rates

FEATURE_WARNING = "unlike the training scans"  # how postprocess.warnings_for words the feature check


def _tally(warnings: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Share of images with any warning, with an input-check warning, and with the feature-space warning."""
    n = len(warnings)
    feature = [any(w.startswith(FEATURE_WARNING) for w in ws) for ws in warnings]
    checks = [any(not w.startswith(FEATURE_WARNING) for w in ws) for ws in warnings]
    return {"count": n, "flagged": float(np.mean([bool(ws) for ws in warnings])) if n else None,
            "input_checks_flagged": float(np.mean(checks)) if n else None,
            "feature_flagged": float(np.mean(feature)) if n else None}


def pixel_warnings(classifier, pixels: np.ndarray, batch_size: int = 16) -> list[tuple[str, ...]]:
    """Each model-sized uint8 image's warnings, through `Classifier.predictions`."""
    found: list[tuple[str, ...]] = []
    for start in range(0, len(pixels), batch_size):
        batch = np.ascontiguousarray(pixels[start:start + batch_size])
        results = classifier.predictions(batch, [(None, None, None)] * len(batch))
        found += [tuple(r.warnings) if r.ok else ("no label: model output not a number",) for r in results]
    return found


def measure_ood_rates(classifier, test_paths: Sequence[Path], count: int = 50, seed: int = 0,
                      batch_size: int = 16) -> dict[str, Any]:
    """{"sets": {name: rates}, "test": rates on the held-out scans (false alarms), "notes": [...]}.

    `count` images per generated set at the model's input size; the inverted-scans set is made from held-out
    scans, so it needs `test_paths`."""
    from tumor_edge.calibration.ood_sets import generated_sets

    spec = classifier.preprocessing
    # through the streaming path `classify` uses: each scan's warnings, None for one that could not be read
    found = [tuple(r.warnings) if r.ok else None
             for r in classifier.iter_predictions(list(test_paths), batch_size=batch_size)]
    test_warnings = [w for w in found if w is not None]
    decoded = [decode_file(path, spec, "middle") for path in list(test_paths)[:count]]
    scans = [d.pixels[0][0] for d in decoded if d.failure is None]
    sets = generated_sets(count, spec.size, seed, scans=np.stack(scans) if scans else None)
    result = {"sets": {name: _tally(pixel_warnings(classifier, pixels, batch_size)) for name, pixels in sets.items()},
              "test": {**_tally(test_warnings), "unreadable": len(found) - len(test_warnings)},
              "feature_check": bool(classifier.postprocessing.has_ood), "seed": seed, "per_set": count}
    if not classifier.postprocessing.has_ood:
        result["notes"] = ["this bundle has no feature-space fit: input checks only"]
    return result


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its validated metadata.json. `Bundle.open` raises a one-line ModelError naming the
    file for a folder that is not a valid bundle; model files are checked when asked (`check`) or opened. The
    runtime only reads bundles; export writes them."""

    path: Path
    metadata: BundleMetadata

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Read and validate `path`/metadata.json (no model file is read yet: cheap)."""
        path = Path(path)
        return cls(path, BundleMetadata.read(path))

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.classes)

    @property
    def models(self) -> list[str]:
        """The model files the bundle lists."""
        return list(self.metadata.models)

    def check(self, name: str | None = None) -> list[Path]:
        """Prove the listed model files (or the one named) are the ones recorded: present, of the recorded size
        and sha256, every member file too. Returns their paths; a BundleIntegrityError or ModelError (one line
        naming the file) for the first that is not."""
        names = [name] if name is not None else self.models
        return [read_model_files(self.path, n, self.metadata).path for n in names]

    def classifier(self, model_file: str | None = None, options: BackendOptions | None = None) -> Classifier:
        """A Classifier on one of the bundle's files (None: this device's measured choice)."""
        return Classifier.from_bundle(self.path, model_file=model_file, options=options)

    def verify(self, **kwargs) -> VerifyReport:
        """This device's checks (`verify_bundle`'s keyword arguments): integrity, the recorded reference
        outputs, optionally labelled data; never raises for a bad bundle."""
        return verify_bundle(self.path, **kwargs)
