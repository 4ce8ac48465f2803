"""Export's plan, counted in a real small export (a 32 px Keras model with a CAM head, ONNX fp32 and fp16, parity
on the toy test images, heatmaps): each exported file is opened through the runtime once, for parity, heatmap
parity and the reference record together, and metadata.json is written once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.toydata import CLASSES
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata
from tumor_edge.runtime import Classifier

pytestmark = pytest.mark.slow  # a Keras model converted and checked (in this process: no TensorFlow worker)


def small_cam_model(size: int = 32):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="last_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax", name="head")(x))
    model.get_layer("head").set_weights([np.random.default_rng(0).normal(0, 4, (8, len(CLASSES))),
                                         np.zeros(len(CLASSES))])
    return model


@pytest.fixture(scope="module")
def counted(toy_dataset, tmp_path_factory) -> tuple[Path, Counter, list[Path]]:
    from tumor_edge.export.config import ExportConfig
    from tumor_edge.export.exporter import export_bundle

    base = tmp_path_factory.mktemp("plan")
    small_cam_model().save(base / "m.keras")
    opens: Counter = Counter()
    writes: list[Path] = []
    init, write = Classifier.__init__, BundleMetadata.write

    def counting_init(self, backend, metadata, *args, **kwargs):
        opens[Path(backend.path).name] += 1
        init(self, backend, metadata, *args, **kwargs)

    def counting_write(self, bundle_dir):
        writes.append(Path(bundle_dir))
        return write(self, bundle_dir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Classifier, "__init__", counting_init)
        patch.setattr(BundleMetadata, "write", counting_write)
        result = export_bundle(ExportConfig(source=base / "m.keras", out=base / "bundle", classes=list(CLASSES),
                                            preprocess="unit", formats=("onnx",), fp16=True, test_data=toy_dataset,
                                            allow_unproven=True, isolate=False, show_progress=False))
    return result.out, opens, writes


def test_each_exported_file_is_opened_once_for_parity_heatmaps_and_its_reference(counted):
    bundle, opens, _ = counted
    metadata = BundleMetadata.read(bundle)
    assert "heatmap" in metadata.outputs, "the model has a CAM head: heatmap parity runs"
    assert set(metadata.metrics["heatmap_parity"]) == set(metadata.models)
    assert metadata.reference is not None and set(metadata.reference.outputs) == set(metadata.models)
    assert set(metadata.metrics["parity"]["files"]) == set(metadata.models)
    assert sorted(metadata.models) == ["model_fp16.onnx", "model_fp32.onnx"]
    assert {name: opens[name] for name in metadata.models} == {name: 1 for name in metadata.models}


def test_metadata_json_is_written_once(counted):
    bundle, _, writes = counted
    assert writes == [bundle]
    assert (bundle / METADATA_FILE).is_file()


def pid_probe(ctx, dst) -> dict:
    """A converter from the Keras model: writes a real ONNX file by hand, says which process it ran in."""
    import os
    import sys

    from tests.export.hand_format import convert

    convert(ctx, dst)
    return {"pid": os.getpid(), "model_id": id(ctx.model), "tensorflow": "tensorflow" in sys.modules}


def derived_probe(ctx, dst) -> dict:
    """A converter from another row's file (as ONNX int8 from fp32): no TensorFlow needed or imported."""
    import os
    import shutil
    import sys

    shutil.copyfile(ctx.needs_ok("onnx-a"), dst)
    return {"pid": os.getpid(), "tensorflow": "tensorflow" in sys.modules}


def test_the_plan_loads_tensorflow_once_and_keeps_it_out_of_derived_rows(tmp_path, monkeypatch, caplog):
    """Every row converted from the Keras model runs in the one worker, on the model it loaded once; a row made
    from another row's file runs in a TensorFlow-free child of its own; each logs its step where it runs. (One
    isolated export without parity: one TensorFlow start.)"""
    import logging
    import os

    import keras

    from tumor_edge.contracts import formats
    from tumor_edge.contracts.formats import ModelFormat
    from tumor_edge.export.config import ExportConfig
    from tumor_edge.export.exporter import export_bundle
    from tumor_edge.export.formats import CONVERTERS

    inputs = keras.Input((32, 32, 3))  # pooled then dense: what tests/export/hand_format.py writes by hand
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("head").set_weights([np.random.default_rng(0).normal(0, 8, (3, 4)), np.zeros(4)])
    model.save(tmp_path / "m.keras")
    rows = (ModelFormat("onnx-a", "onnx", "fp32", "model_a.onnx", "onnxruntime"),
            ModelFormat("onnx-b", "onnx", "fp16", "model_b.onnx", "onnxruntime"),
            ModelFormat("onnx-c", "onnx", "int8", "model_c.onnx", "onnxruntime", needs="onnx-a"))
    for key, function in (("onnx-a", pid_probe), ("onnx-b", pid_probe), ("onnx-c", derived_probe)):
        monkeypatch.setitem(CONVERTERS, key, function)
    monkeypatch.setattr(formats, "FORMATS", rows)
    with caplog.at_level(logging.INFO, logger="tumor_edge.export"):
        result = export_bundle(ExportConfig(source=tmp_path / "m.keras", out=tmp_path / "bundle",
                                            classes=list(CLASSES), preprocess="unit", parity=False,
                                            show_progress=False))
    a, b, c = (row.extra for row in result.files)
    assert all(row.ok for row in result.files), [row.status for row in result.files]
    assert a["pid"] == b["pid"] != os.getpid(), "both Keras rows in the one worker"
    assert a["model_id"] == b["model_id"], "the model was loaded once, not per row"
    assert a["tensorflow"] and not c["tensorflow"]
    assert c["pid"] not in (os.getpid(), a["pid"])
    messages = [r.getMessage() for r in caplog.records]
    for key in ("load", "onnx-a", "onnx-b", "onnx-c"):
        assert f"export step {key} start" in messages and any(m.startswith(f"export step {key} done in")
                                                              for m in messages), key
    assert any(m.startswith("export job onnx-a done in") and "worker RSS" in m for m in messages)
