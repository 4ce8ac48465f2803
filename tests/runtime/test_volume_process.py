"""Volumes through real processes: the `tumor-edge` console script on a NIfTI file, and an install without
nibabel (the `nifti` extra), where a NIfTI input is one line naming the extra and the rest of the batch runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runtime.models import make_bundle, save_quadrant
from tests.runtime.volume_files import head, write_nifti, write_series

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("volproc")
    return (root, make_bundle(root / "bundle"), write_nifti(root / "brain.nii.gz", head()),
            save_quadrant(root / "scan.png", 3))


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)
    env.pop("TUMOR_EDGE_MODEL", None)
    return env


def test_console_script_classifies_a_volume(case):
    root, bundle, volume, _ = case
    script = Path(sys.executable).parent / "tumor-edge"
    done = subprocess.run([str(script), "classify", str(volume), "-m", str(bundle), "--slices", "3", "--json"],
                          capture_output=True, text=True, env=_env(), timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r.get("slice") for r in rows[:-1]] == [4, 16, 27]
    assert rows[-1]["summary"] == "volume" and rows[-1]["label"] == "meningioma"


def test_missing_nifti_extra_is_one_line_and_the_batch_goes_on(case, tmp_path):
    root, bundle, volume, scan = case
    series = write_series(tmp_path / "series", head()[:, :, :6])
    code = textwrap.dedent(f"""
        import sys
        sys.modules["nibabel"] = None  # as on an install without the nifti extra: `import nibabel` fails
        from tumor_edge.cli import main
        main(["classify", {str(volume)!r}, {str(scan)!r}, {str(series)!r}, "-m", {str(bundle)!r}])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
                          cwd=root)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {volume}: reading NIfTI volumes needs the `nifti` extra (nibabel is not installed): "
                      "pip install 'tumor-edge[nifti]'"]
    assert "Traceback" not in done.stderr
    assert "pituitary" in done.stdout and f"{series} [volume: axial" in done.stdout  # DICOM needs no nibabel
