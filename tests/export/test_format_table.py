"""The format table drives export: the CLI's choices come from it, and a new format is one converter (registered
by its key in tumor_edge.export.formats) plus one table row (exported, stamped, listed in metadata and
parity-checked with no other change); a converter that fails becomes a failed row, not a crash, and its
half-written file is removed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.toydata import CLASSES
from tumor_edge.contracts import formats
from tumor_edge.contracts.bundle import METADATA_FILE, PARITY_JSON
from tumor_edge.contracts.formats import CONTAINERS, ENABLING_OPTIONS, FORMATS, ModelFormat
from tumor_edge.errors import ConfigError, ModelError
from tumor_edge.export.config import ExportConfig
from tumor_edge.export.formats import CONVERTERS

SIZE = 32


def test_cli_choices_and_options_come_from_the_table():
    from tumor_edge.export.commands import export

    params = {p.name: p for p in export.params}
    for option in ENABLING_OPTIONS:
        assert params[option].is_flag, option
        assert hasattr(ExportConfig(source=Path("m"), out=Path("o")), option), option
        for fmt in FORMATS:
            if fmt.enabled_by == option:
                assert fmt.file in params[option].help
    assert params["formats"].default == ",".join(CONTAINERS)
    config = ExportConfig(source=Path("m"), out=Path("o"))
    for name in ("calib_count", "select_count", "opset", "seed"):
        assert params[name].default == getattr(config, name), name
    for name in ("max_accuracy_drop", "max_auc_drop", "min_agreement", "confidence"):
        assert params[name].default == getattr(config.thresholds, name), name


def test_export_help_is_light():
    """The table and the config defaults the CLI reads load neither numpy nor TensorFlow."""
    import subprocess
    import sys

    code = ("import sys; from tumor_edge.cli import main\n"
            "try: main(['export', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('numpy', 'tensorflow', 'onnx', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--allow-unproven" in result.stdout, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_config_selects_rows_by_container_and_option():
    config = ExportConfig(source=Path("m"), out=Path("o"), formats=("onnx",), int8=True)
    assert [f.key for f in config.selected()] == [f.key for f in FORMATS if f.format == "onnx"
                                                  and f.enabled_by in (None, "int8")]
    assert {f.key for f in ExportConfig(source=Path("m"), out=Path("o")).selected()} == \
        {f.key for f in FORMATS if f.enabled_by is None}
    with pytest.raises(ConfigError, match="formats must be among"):
        ExportConfig(source=Path("m"), out=Path("o"), formats=("onnx", "coreml"))
    with pytest.raises(ConfigError, match="calib count"):
        ExportConfig(source=Path("m"), out=Path("o"), calib_count=0)


@pytest.fixture(scope="module")
def pooling_model(tmp_path_factory) -> Path:
    """Global average pooling then a softmax dense layer named "head": small enough to write in ONNX by hand."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("head").set_weights([np.random.default_rng(5).normal(0, 8, (3, len(CLASSES))),
                                         np.zeros(len(CLASSES))])
    path = tmp_path_factory.mktemp("pooling") / "pooling.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_a_new_format_is_one_module_and_one_row(pooling_model, toy_dataset, tmp_path, monkeypatch):
    from tests.export import hand_format
    from tumor_edge.export.exporter import export_bundle
    from tumor_edge.runtime.classifier import read_onnx_metadata

    hand = ModelFormat("onnx-hand", "onnx", "fp32", "model_hand.onnx", "onnxruntime")
    broken = ModelFormat("onnx-broken", "onnx", "fp32", "model_broken.onnx", "onnxruntime")
    monkeypatch.setattr(formats, "FORMATS", FORMATS + (hand, broken))
    monkeypatch.setitem(CONVERTERS, hand.key, hand_format.convert)
    monkeypatch.setitem(CONVERTERS, broken.key, hand_format.broken)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    out = tmp_path / "bundle"
    config = ExportConfig(source=pooling_model, out=out, formats=("onnx",), classes=list(CLASSES),
                          preprocess="unit", test_data=toy_dataset, show_progress=False)
    with pytest.raises(ModelError) as failure:
        export_bundle(config)
    message = str(failure.value)
    assert "model_broken.onnx (failed: this converter always fails)" in message and "second line" not in message
    assert not (out / "model_broken.onnx").exists(), "a failed converter's half-written file must go"

    meta = json.loads((out / METADATA_FILE).read_text())
    assert set(meta["models"]) == {"model_fp32.onnx", "model_hand.onnx"}
    hand_entry = meta["models"]["model_hand.onnx"]
    assert hand_entry["converter"] == "onnx.helper, by hand"
    assert hand_entry["parity"] in ("pass", "not proven")  # the toy test split is too small to prove 1 point
    parity = json.loads((out / PARITY_JSON).read_text())
    checked = parity["files"]["model_hand.onnx"]
    assert checked["agreement"] == 1.0 and checked["max_abs_diff"] < 1e-5 and parity["n_images"] > 0
    assert read_onnx_metadata(out / "model_hand.onnx").classes == list(CLASSES)  # stamped like any ONNX file
    assert meta["provenance"]["step_seconds"]["model_hand.onnx"] > 0


@pytest.mark.slow
def test_converters_run_in_their_own_processes(pooling_model, tmp_path, monkeypatch):
    """By default a converter runs outside the exporting process (the TensorFlow worker, or a TensorFlow-free
    child for rows made from another file), so its memory goes back to the system; isolate=False runs it here."""
    from tumor_edge.export.exporter import export_bundle

    probe = ModelFormat("onnx-probe", "onnx", "fp32", "model_probe.onnx", "onnxruntime")
    monkeypatch.setattr(formats, "FORMATS", (probe,))
    monkeypatch.setitem(CONVERTERS, probe.key, _pid_probe)
    out = tmp_path / "bundle"
    result = export_bundle(ExportConfig(source=pooling_model, out=out, classes=list(CLASSES), preprocess="unit",
                                        parity=False, show_progress=False))
    (row,) = result.files
    assert row.ok and row.extra["pid"] != os.getpid()
    result = export_bundle(ExportConfig(source=pooling_model, out=out, classes=list(CLASSES), preprocess="unit",
                                        parity=False, show_progress=False, isolate=False, force=True))
    assert result.files[0].extra["pid"] == os.getpid()


def _pid_probe(ctx, dst: Path) -> dict:
    from tests.export.hand_format import convert

    convert(ctx, dst)
    return {"pid": os.getpid()}
