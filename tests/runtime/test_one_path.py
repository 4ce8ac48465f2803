"""Each rule of the prediction path lives once: the same input gives the same verdict and the same words
whichever surface (classify's stderr, its JSON, serve, the Python API) reports it."""

from __future__ import annotations

import json

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
    from tumor_edge.serve.model_check import check_runs

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
