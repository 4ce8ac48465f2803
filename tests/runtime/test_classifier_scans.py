"""`Classifier.classify` and `Classifier.iter_results`: any path a reader claims, volumes included, through the
Python API, giving what `classify --json` prints (per-slice rows, then the volume summary).

Real files (nibabel, pydicom, Pillow) through the real runtime and the quadrant model of tests/runtime/models.py.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.runtime.models import quadrant_image
from tests.runtime.volume_files import head, write_nifti, write_series
from tumor_edge import RESEARCH_NOTICE
from tumor_edge.cli import main
from tumor_edge.runtime.classifier import Classifier
from tumor_edge.runtime.postprocess import VolumeSummary


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    png = root / "top_right.png"
    Image.fromarray(quadrant_image(1)).save(png)
    return {"png": png, "nifti": write_nifti(root / "head.nii.gz", head()),
            "series": write_series(root / "series", head())}


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def cli_rows(*args) -> list[dict]:
    result = CliRunner().invoke(main, ["classify", *map(str, args), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("name", ["nifti", "series"])
def test_classify_a_volume_gives_the_rows_and_summary_the_cli_prints(bundle, scans, state, name):
    clf = Classifier.from_bundle(bundle)
    result = clf.classify(scans[name], slices=3)
    assert result.ok and result.summary is not None and len(result.predictions) == 3
    cli = cli_rows(scans[name], "-m", bundle, "--slices", "3")
    assert [p.frame for p in result.predictions] == [r["slice"] for r in cli[:-1]]
    assert [p.label for p in result.predictions] == [r["label"] for r in cli[:-1]]
    cli_summary = {k: v for k, v in cli[-1].items() if k not in ("model_file", "engine")}  # the writer adds these
    assert result.summary.to_dict(RESEARCH_NOTICE) == cli_summary
    assert result.label == cli[-1]["label"] == "meningioma"


def test_classify_an_image_and_a_bad_file(bundle, scans, tmp_path):
    clf = Classifier.from_bundle(bundle)
    image = clf.classify(scans["png"])
    assert image.ok and image.summary is None and image.label == "meningioma"
    bad = tmp_path / "broken.nii"
    bad.write_bytes(b"not a nifti header at all" * 20)
    failed = clf.classify(bad)
    assert not failed.ok and not failed.predictions and str(bad) in failed.failures[0].message
    assert "\n" not in failed.failures[0].message


def test_iter_results_keeps_input_order_across_images_and_volumes(bundle, scans):
    clf = Classifier.from_bundle(bundle)
    items = list(clf.iter_results([scans["png"], scans["nifti"], scans["png"]], slices=2))
    kinds = [type(i).__name__ if isinstance(i, VolumeSummary) else i.source for i in items]
    assert kinds == [str(scans["png"]), str(scans["nifti"]), str(scans["nifti"]), "VolumeSummary",
                     str(scans["png"])]


def test_iter_predictions_refuses_a_volume_in_one_line(bundle, scans):
    """The image stream (parity, predict) takes 2-D files; a volume is one failure saying where it goes."""
    [result] = Classifier.from_bundle(bundle).iter_predictions([scans["nifti"]])
    assert not result.ok and "is a volume (nifti)" in result.message and "Classifier.classify" in result.message
