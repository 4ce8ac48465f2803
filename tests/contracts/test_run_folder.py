"""The run folder contract: typed config.json that keeps keys it does not know."""

from __future__ import annotations

import json

import pytest

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.errors import ModelError


def test_round_trip_keeps_unknown_keys(tmp_path):
    run = RunFolder(tmp_path)
    config = RunConfig(classes=["a", "b"], preprocessing=Preprocessing(75, 75), data_fingerprint="f" * 64)
    data = config.to_dict()
    data["from_the_future"] = {"x": 1}
    run.config.write_text(json.dumps(data))
    back = run.read_config()
    assert back.classes == ["a", "b"] and back.preprocessing.height == 75 and back.data_fingerprint == "f" * 64
    assert back.to_dict()["from_the_future"] == {"x": 1}


def test_file_names_are_the_properties():
    run = RunFolder("r")
    named = {run.model.name, run.config.name, run.split.name, run.history.name, run.metrics.name,
             run.predictions.name, run.roc_png.name, run.confusion_png.name, run.curves_png.name,
             run.reliability_png.name, run.ood_params.name}
    assert named == set(RunFolder.FILE_NAMES)


@pytest.mark.parametrize("data", [[], {"classes": "ab"}, {"classes": ["a"], "preprocessing": None}])
def test_invalid_config_is_one_line(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        RunConfig.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
