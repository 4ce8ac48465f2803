"""The recipe for a new input type (README, "Where to add things"), followed by this file alone.

An NRRD-like single-file volume format (`.fake`: a one-line text header `FAKE X Y Z SX SY SZ`, then int16 voxels in
RAS order) whose header is parsed by its own package (`fakevolio`, distribution `fake-volume-io`, installed by the
test into a folder on sys.path, brought by the extra `fakevol`). The recipe's files are:
- its reader module (`tumor_edge/runtime/readers/fake.py`: `read_fake` below),
- its row in `READERS` of `tumor_edge/runtime/readers/__init__.py` (`FAKE` below, put in the table for each test),
- its extra in pyproject.toml (`RECIPE_EXTRA`, added to a parsed copy of the repository's pyproject),
- its test (this file).
It is classified through `Classifier.classify` and the `classify` CLI without a change anywhere else: the folder
walk lists it, the volume path slices it, the summary comes after its slices, and a damaged file is one line
while the batch goes on; the extras table, `tumor-edge env` and classify's list of input types name it. Its
results must equal those of the same voxels stored as NIfTI (the built-in volume reader), so the fake reader is
held to the real one's answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tumor_edge.runtime.readers as registry
from tests.runtime.volume_files import head, write_nifti
from tumor_edge.cli import main
from tumor_edge.errors import InputImageError
from tumor_edge.runtime.classifier import Classifier
from tumor_edge.runtime.preprocess import scan_inputs
from tumor_edge.runtime.readers import VOLUME, Reader, ReadOptions, Scan, read_scan
from tumor_edge.runtime.readers.base import check_volume_size, open_regular
from tumor_edge.runtime.volume import Volume, volume_scan

MAGIC = b"FAKE "
MAX_HEADER = 200


# ---- the reader's package, as pip would install it ---------------------------------------------------------------
FAKEVOLIO = '''
def parse_header(line):
    """(shape, spacing) from b"FAKE X Y Z SX SY SZ", or ValueError."""
    fields = line.split()
    if len(fields) != 7 or fields[0] != b"FAKE":
        raise ValueError("no FAKE header")
    return tuple(int(v) for v in fields[1:4]), tuple(float(v) for v in fields[4:7])
'''


def install_fakevolio(site: Path) -> None:
    (site / "fakevolio").mkdir(parents=True)
    (site / "fakevolio" / "__init__.py").write_text(FAKEVOLIO)
    info = site / "fake_volume_io-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-volume-io\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("fakevolio\n")


# ---- the reader module: what `tumor_edge/runtime/readers/fake.py` would hold --------------------------------------

def write_fake(path: Path, ras: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "FAKE " + " ".join(map(str, (*ras.shape, *spacing))) + "\n"
    path.write_bytes(header.encode() + ras.astype("<i2").tobytes())
    return path


def read_fake(path: Path, options: ReadOptions) -> Scan:
    """Header first (shape checked against the caps before a voxel is read), then the voxels."""
    import fakevolio

    with open_regular(path) as fh:
        line = fh.readline(MAX_HEADER)
        if not line.startswith(MAGIC):
            raise InputImageError("not a FAKE volume (no 'FAKE X Y Z SX SY SZ' header line)", path)
        try:
            shape, spacing = fakevolio.parse_header(line)
        except ValueError:
            raise InputImageError("FAKE header is not 'FAKE X Y Z SX SY SZ' in numbers", path) from None
        check_volume_size(shape, 2, path)
        data = fh.read()
    need = int(np.prod(shape)) * 2
    if len(data) < need:
        raise InputImageError(f"FAKE volume is truncated ({len(data)} of {need} voxel bytes)", path)
    stored = np.frombuffer(data[:need], "<i2").reshape(shape)
    return volume_scan(Volume(str(path), stored, spacing), options, "fake")


# ---- its row (in READERS of `readers/__init__.py`) -----------------------------------------------------------------

FAKE = Reader("fake", (".fake",), read_fake, kind=VOLUME, extra="fakevol", modules=("fakevolio",),
              description="FAKE (.fake)")

# ---- its extra (pyproject.toml, under [project.optional-dependencies]) ------------------------------------------
RECIPE_EXTRA = 'fakevol = ["fake-volume-io>=1.0"]'


# ---- its test ---------------------------------------------------------------------------------------------------

@pytest.fixture()
def fake_reader(tmp_path_factory, monkeypatch):
    """The row in the table and the reader's package installed, for this test only."""
    site = tmp_path_factory.mktemp("site")
    install_fakevolio(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "READERS", [*registry.READERS, FAKE])
    yield FAKE
    sys.modules.pop("fakevolio", None)


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def cli(*args):
    return CliRunner().invoke(main, ["classify", *map(str, args)], catch_exceptions=False)


def test_without_its_row_a_fake_file_is_no_scan(tmp_path):
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


def suffix_clashes(readers) -> dict[str, list[str]]:
    """suffix -> the readers claiming it, where more than one does (a suffix has one reader), and the same for
    names."""
    claims: dict[str, list[str]] = {}
    for reader in readers:
        claims.setdefault(f"name {reader.name}", []).append(reader.name)
        for suffix in reader.suffixes:
            claims.setdefault(suffix, []).append(reader.name)
    return {key: names for key, names in claims.items() if len(names) > 1}


def test_every_row_names_functions_that_exist():
    """The rows name their code as 'module:function', imported on first use: a typo would surface only when a
    file of that type turns up, so it is caught here."""
    import importlib

    for reader in registry.readers():
        for ref in (reader.read, reader.folder):
            if isinstance(ref, str):
                module, _, name = ref.partition(":")
                assert callable(getattr(importlib.import_module(module), name, None)), (reader.name, ref)


def test_a_suffix_and_a_name_have_one_reader(fake_reader):
    assert suffix_clashes(registry.readers()) == {}
    assert suffix_clashes([*registry.readers(), Reader("other", (".nii",), read_fake)]) == {".nii": ["nifti", "other"]}


def test_the_extras_env_and_classify_help_name_the_new_type(fake_reader):
    from tumor_edge.envcmd.commands import environment, format_text
    from tumor_edge.envcmd.extras import all_extras, extra_for, extras_present

    assert all_extras()["fakevol"] == ("fakevolio",) and extra_for("fakevolio") == "fakevol"
    assert extras_present()["fakevol"] == {"fakevolio": True}
    assert "extra fakevol   present" in format_text(environment())
    volumes = registry.readers_help().split("Volumes: ")[1]
    assert "FAKE (.fake) [`fakevol` extra]" in volumes
    shown = " ".join(CliRunner().invoke(main, ["classify", "--help"], terminal_width=200).output.split())
    assert "FAKE (.fake) [`fakevol` extra]" in shown.split("Volumes: ")[1]


def test_the_extra_is_declared_by_the_recipes_line_in_pyproject(fake_reader):
    from tests.test_install import REPO, extras_not_declared, tomllib

    text = (REPO / "pyproject.toml").read_text()
    assert extras_not_declared(tomllib.loads(text)) == ["extra fakevol is not in pyproject"]
    section = "[project.optional-dependencies]\n"
    assert extras_not_declared(tomllib.loads(text.replace(section, section + RECIPE_EXTRA + "\n"))) == []


def test_the_row_ends_with_the_test():
    from tumor_edge.envcmd.extras import all_extras

    assert "fake" not in {r.name for r in registry.readers()} and "fakevol" not in all_extras()
    assert "FAKE" not in registry.readers_help()
