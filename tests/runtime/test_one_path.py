"""Each rule of the prediction path lives once: the same input gives the same verdict and the same words
whichever surface (classify's stderr, its JSON, serve, the Python API) reports it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.runtime.hostile import run_classify


def _offset_model(offset: float):
    """The quadrant model's softmax plus `offset` on every class: rows summing to 1 + 4 * offset."""
    from onnx import helper

    from tests.serve.models import _graft

    return _graft([helper.make_node("Add", ["probs", "offset"], ["out"])],
                  [helper.make_tensor("offset", 1, [], [offset])], "out")


@pytest.mark.parametrize("offset", [0.0025, 0.006, 0.05])
def test_serve_and_the_runtime_hold_class_scores_to_one_probability_rule(offset, tmp_path):
    """Rows summing to 1.01 (within an 8-bit softmax's rounding per class), 1.024 and 1.2: serve's start-up
    check refuses a model exactly when the runtime's prediction refuses it."""
    from tests.serve.models import bundle_with
    from tumor_edge.errors import ModelError
    from tumor_edge.runtime import Classifier
    from tumor_edge.serve.server import check_runs

    classifier = Classifier.from_bundle(bundle_with(tmp_path / "b", _offset_model(offset)))
    verdicts = []
    for run in (lambda: check_runs(classifier), lambda: classifier.predict(np.zeros((32, 32, 3), np.uint8))):
        try:
            run()
            verdicts.append("ok")
        except ModelError:
            verdicts.append("refused")
    assert verdicts[0] == verdicts[1], verdicts


def test_a_flat_png_gets_one_constant_image_message_on_stderr_and_in_json(bundle, tmp_path):
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(flat)
    result = run_classify(flat, "-m", bundle, "--json", text=True)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    said = [w for w in row["warnings"] if "constant" in w]
    assert said, row
    on_stderr = [line.removeprefix(f"warning: {flat}: ") for line in result.stderr.splitlines()
                 if line.startswith("warning:") and "constant" in line]
    assert set(on_stderr) <= set(said), (on_stderr, said)


# A profiler over one `classify scan.jpg --json` call: which of our files run a function (module bodies, which
# only define names, are not counted) and which of our modules are loaded at all.
_PROFILED_CLASSIFY = """
import json, sys, threading
from pathlib import Path
root = str(Path(sys.argv[3]).resolve()) + "/"
ran = set()
def profile(frame, event, arg):
    name = frame.f_code.co_filename
    if event == "call" and name.startswith(root) and frame.f_code.co_name != "<module>":
        ran.add(name[len(root):])
sys.setprofile(profile)
threading.setprofile(profile)
from tumor_edge.cli import main
try:
    main(["classify", sys.argv[1], "--model", sys.argv[2], "--json"])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
sys.setprofile(None)
print(json.dumps({"ran": sorted(ran), "loaded": sorted(m for m in sys.modules if m.startswith("tumor_edge"))}))
"""

# Whole families a one-JPEG run has no use for: volumes, their readers, the LiteRT engine, fitting OOD scores.
NOT_FOR_ONE_JPEG = ("tumor_edge.runtime.volume", "tumor_edge.calibration", "tumor_edge.runtime.explain")
# The other readers (and what they load) and the LiteRT engine: a JPEG needs neither.
OTHER_READERS = ("tumor_edge.runtime.readers.nifti", "tumor_edge.runtime.readers.dicom")
OTHER_ENGINES = ("tumor_edge.runtime.backends.litert_backend",)
FILES_RUN_NOW = 16  # no more than today
MAX_FILES_RUN = 25


@pytest.fixture(scope="module")
def one_jpeg_run(tmp_path_factory):
    import os
    import subprocess
    import sys

    import tumor_edge
    from tests.runtime.models import make_bundle, save_quadrant

    root = tmp_path_factory.mktemp("one_jpeg")
    bundle = make_bundle(root / "bundle")
    scan = save_quadrant(root / "scan.jpg", 3, quality=95)
    env = dict(os.environ, TUMOR_EDGE_CACHE_DIR=str(root / "cache"))
    env.pop("TUMOR_EDGE_MODEL", None)
    package = Path(tumor_edge.__file__).parent
    runs = [subprocess.run([sys.executable, "-c", _PROFILED_CLASSIFY, str(scan), str(bundle), str(package)],
                           capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    label = json.loads(runs[1].stdout.splitlines()[0])["label"]
    return label, json.loads(runs[1].stdout.splitlines()[-1])  # the second run: the model cache is warm


def _in(module: str, families: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f) for f in families)


def test_one_jpeg_loads_no_volume_explanation_or_calibration_module(one_jpeg_run):
    label, seen = one_jpeg_run
    assert label == "pituitary"
    assert [m for m in seen["loaded"] if _in(m, NOT_FOR_ONE_JPEG)] == []


def test_one_jpeg_loads_no_other_reader_and_runs_no_more_files_than_today(one_jpeg_run):
    _, seen = one_jpeg_run
    assert [m for m in seen["loaded"] if _in(m, OTHER_READERS)] == []
    assert len(seen["ran"]) <= FILES_RUN_NOW, seen["ran"]


def test_one_jpeg_loads_no_other_engine(one_jpeg_run):
    _, seen = one_jpeg_run
    assert [m for m in seen["loaded"] if _in(m, OTHER_ENGINES)] == []


def test_one_jpeg_runs_few_of_our_files(one_jpeg_run):
    _, seen = one_jpeg_run
    assert len(seen["ran"]) <= MAX_FILES_RUN, seen["ran"]


def test_heatmap_overlays_are_drawn_on_the_pixels_the_model_saw_without_a_second_decode(bundle, tmp_path,
                                                                                         monkeypatch):
    """`classify --heatmap` over a folder of images and a multi-frame file: each file is read once."""
    from click.testing import CliRunner

    import tumor_edge.runtime.preprocess as decoding
    from tests.runtime.hostile import animated_gif
    from tests.runtime.models import quadrant_image, save_quadrant
    from tumor_edge.cli import main

    scans = [save_quadrant(tmp_path / "scans" / f"q{q}.png", q) for q in range(3)]
    scans.append(animated_gif(tmp_path / "scans" / "frames.gif", [quadrant_image(q) for q in (1, 2, 3)]))
    reads: list[str] = []
    real = decoding.read_scan

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decoding, "read_scan", counting)
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["classify", "-m", str(bundle), "--json", "--frames", "all", "--heatmap-grid",
                                       "2", "--heatmap", str(tmp_path / "maps"), str(tmp_path / "scans")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 6 and all(Path(row["heatmap_png"]).is_file() for row in rows)
    assert sorted(reads) == sorted(map(str, scans))


@pytest.mark.parametrize("frames", ["first", -1, True, 1.5])
def test_a_frames_choice_is_checked_once_before_any_file_is_read(bundle, tmp_path, frames):
    from tests.runtime.models import save_quadrant
    from tumor_edge.errors import ConfigError
    from tumor_edge.runtime import Classifier

    scan = save_quadrant(tmp_path / "q.png", 1)
    classifier = Classifier.from_bundle(bundle)
    with pytest.raises(ConfigError, match="frames must be one of"):
        next(classifier.iter_predictions([scan, tmp_path / "missing.png"], frames=frames))
