"""The recipe "a new input type = a reader module + its registry row + its test", proven by this file alone.

An NRRD-like single-file volume format (`.fake`: a one-line text header `FAKE X Y Z SX SY SZ`, then int16 voxels in
RAS order) is written here, registered from here, and classified through `Classifier.classify` and the `classify`
CLI without a change anywhere else: the folder walk lists it, the volume path slices it, the summary comes after
its slices, and a damaged file is one line while the batch goes on. Its results must equal those of the same
voxels stored as NIfTI (the built-in volume reader), so the fake reader is held to the real one's answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.runtime.volume_files import head, write_nifti
from tumor_edge.cli import main
from tumor_edge.errors import InputImageError
from tumor_edge.runtime.caps import check_volume_size
from tumor_edge.runtime.classifier import Classifier
from tumor_edge.runtime.inputs import scan_inputs
from tumor_edge.runtime.readers import VOLUME, Reader, ReadOptions, Scan, read_scan, register_reader, unregister_reader
from tumor_edge.runtime.special_files import open_regular
from tumor_edge.runtime.volume import volume_scan
from tumor_edge.runtime.volume_data import Volume

MAGIC = b"FAKE "
MAX_HEADER = 200


# ---- the reader module: what `tumor_edge/runtime/readers/fake.py` would hold --------------------------------------

def write_fake(path: Path, ras: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "FAKE " + " ".join(map(str, (*ras.shape, *spacing))) + "\n"
    path.write_bytes(header.encode() + ras.astype("<i2").tobytes())
    return path


def read_fake(path: Path, options: ReadOptions) -> Scan:
    """Header first (shape checked against the caps before a voxel is read), then the voxels."""
    with open_regular(path) as fh:
        line = fh.readline(MAX_HEADER)
        fields = line.split()
        if not line.startswith(MAGIC) or len(fields) != 7:
            raise InputImageError("not a FAKE volume (no 'FAKE X Y Z SX SY SZ' header line)", path)
        try:
            shape = tuple(int(v) for v in fields[1:4])
            spacing = tuple(float(v) for v in fields[4:7])
        except ValueError:
            raise InputImageError("FAKE header holds something that is not a number", path) from None
        check_volume_size(shape, 2, path)
        data = fh.read()
    need = int(np.prod(shape)) * 2
    if len(data) < need:
        raise InputImageError(f"FAKE volume is truncated ({len(data)} of {need} voxel bytes)", path)
    stored = np.frombuffer(data[:need], "<i2").reshape(shape)
    return volume_scan(Volume(str(path), stored, spacing), options, "fake")


# ---- its registry row (in `readers/registry.py`'s READERS; registered here, for this test only) -----------------

FAKE = Reader("fake", (".fake",), read_fake, kind=VOLUME, packages=("numpy",), description="FAKE test volume")


@pytest.fixture()
def fake_reader():
    register_reader(FAKE)
    yield FAKE
    unregister_reader("fake")


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def cli(*args):
    return CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)


# ---- its test ---------------------------------------------------------------------------------------------------

def test_unregistered_a_fake_file_is_no_scan(tmp_path):
    path = write_fake(tmp_path / "head.fake", head())
    assert scan_inputs([tmp_path]).files == []
    with pytest.raises(InputImageError, match="not an image file"):  # the fallback reader, Pillow, says so
        read_scan(path)


def test_classifier_reads_the_new_type_as_it_reads_nifti(bundle, tmp_path, fake_reader):
    fake = write_fake(tmp_path / "scans" / "head.fake", head())
    nifti = write_nifti(tmp_path / "ref" / "head.nii", head())
    scanned = scan_inputs([fake.parent])
    assert scanned.files == [fake] and scanned.is_volume(fake)
    clf = Classifier.from_bundle(bundle)
    for axis in ("axial", "sagittal"):
        got, want = clf.classify(fake, axis=axis, slices=3), clf.classify(nifti, axis=axis, slices=3)
        assert got.ok and got.summary is not None and len(got.predictions) == 3
        assert [(p.frame, p.frame_count, p.label) for p in got.predictions] == [
            (p.frame, p.frame_count, p.label) for p in want.predictions]
        for a, b in zip(got.predictions, want.predictions):
            assert a.probabilities == b.probabilities  # same voxels, same slicing: the same pixels
        assert (got.summary.label, got.summary.slices) == (want.summary.label, want.summary.slices)


def test_classify_cli_runs_the_new_type_and_reports_a_damaged_one(bundle, tmp_path, state, fake_reader):
    fake = write_fake(tmp_path / "scans" / "a_head.fake", head())
    nifti = write_nifti(tmp_path / "ref" / "head.nii", head())
    broken = tmp_path / "scans" / "b_broken.fake"
    broken.write_bytes(fake.read_bytes()[:500])
    result = cli(fake.parent, "-m", bundle, "--slices", "all", "--json")
    assert result.exit_code == 2, result.output  # one input failed, the other was classified
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    reference = [json.loads(line) for line in cli(nifti, "-m", bundle, "--slices", "all", "--json").stdout.splitlines()]
    *slices, summary, failure = rows
    assert [(r["slice"], r["label"]) for r in slices] == [(r["slice"], r["label"]) for r in reference[:-1]]
    assert summary["summary"] == "volume" and summary["label"] == reference[-1]["label"]
    assert failure["file"] == str(broken) and "truncated" in failure["error"]
    assert f"error: {broken}: FAKE volume is truncated" in result.stderr and "Traceback" not in result.output


def test_a_suffix_has_one_reader(fake_reader):
    from tumor_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="already read by the 'fake' reader"):
        register_reader(Reader("other", (".fake",), read_fake))
    with pytest.raises(ConfigError, match="already read by the 'nifti' reader"):
        register_reader(Reader("other", (".nii",), read_fake))
