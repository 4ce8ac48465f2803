"""The input checks reach volumes: a slice's own voxels are checked before it is framed on a black canvas."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.runtime.volume_files import head, write_nifti
from tumor_edge.cli import main

pytest.importorskip("nibabel")


def _rows(bundle, path):
    result = CliRunner().invoke(main, ["classify", "--json", "--model", str(bundle), str(path)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("name, data, reason", [
    ("constant", np.full((40, 40, 20), 300, np.int16), "blank or constant image"),
    ("noise", np.random.default_rng(0).normal(100, 30, (40, 40, 20)).astype(np.float32), "looks like noise"),
])
def test_a_constant_or_noise_volume_is_flagged_like_an_image(bundle, tmp_path, name, data, reason):
    """A constant or noise volume is flagged in the words a constant or noise PNG gets, although framed on a
    black canvas any box of voxels looks like a head surrounded by air."""
    rows = _rows(bundle, write_nifti(tmp_path / f"{name}.nii.gz", data))
    slices, summary = rows[:-1], rows[-1]
    assert slices and all(any(reason in w for w in row["warnings"]) for row in slices), slices
    assert summary["summary"] == "volume" and any("have warnings" in w for w in summary["warnings"]), summary


def test_a_head_volume_is_not_flagged(bundle, tmp_path):
    rows = _rows(bundle, write_nifti(tmp_path / "head.nii.gz", head()))
    found = [w for row in rows[:-1] for w in row.get("warnings", [])]
    assert not any(w.startswith(("blank or constant", "looks like noise")) for w in found), rows
