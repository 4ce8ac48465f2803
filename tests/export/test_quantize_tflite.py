"""Accuracy-aware TFLite int8 (tumor_edge.export.tflite_export) on a tiny Keras model whose naive int8 breaks:
the same outlier construction as test_quantize_accuracy_aware (a conv output channel offset by +200 next to
~0.1-sized colour channels; int8 activations are per tensor), converted through the real TFLite converter and
run through the runtime's LiteRT backend."""

from __future__ import annotations

import numpy as np
import pytest

from tests.export.test_quantize_accuracy_aware import SIZE, _pixels
from tumor_edge.contracts.preprocessing import Preprocessing


def _keras_outlier_model():
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    conv1 = keras.layers.Conv2D(3, 1, activation="relu", name="conv1")
    conv2 = keras.layers.Conv2D(3, 1, activation="relu", name="conv2")
    conv3 = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv3")
    dense = keras.layers.Dense(4, activation="softmax", name="head")
    x = conv3(conv2(conv1(inputs)))
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(x)))
    w1 = np.zeros((1, 1, 3, 3), np.float32)  # HWIO
    w1[0, 0, :, 0] = 10 / 3
    w1[0, 0, :, 1] = [1, 0, -1]
    w1[0, 0, :, 2] = [-1, 0, 1]
    conv1.set_weights([w1, np.array([200, 0, 0], np.float32)])
    conv2.set_weights([np.diag([1.0, 10.0, 10.0]).astype(np.float32).reshape(1, 1, 3, 3),
                       np.array([-205, 0, 0], np.float32)])
    w4 = np.zeros((3, 3, 3, 3), np.float32)
    w4[:, :, np.arange(3), np.arange(3)] = 1 / 9
    conv3.set_weights([w4, np.zeros(3, np.float32)])
    bright, hue = np.array([-1, -1, 1, 1], np.float32), np.array([1, -1, 1, -1], np.float32)
    dense.set_weights([(np.stack([bright, hue, -hue]) * 5).astype(np.float32), (-bright * 5).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def saved_outlier(tmp_path_factory):
    from tumor_edge.export.tflite_export import export_saved_model

    folder = tmp_path_factory.mktemp("tflite_outlier")
    return export_saved_model(_keras_outlier_model(), folder / "saved_model"), folder


def test_tflite_accuracy_aware_repairs_what_naive_int8_breaks(saved_outlier):
    """The function the TFLite int8 converter calls (export runs each converter in its own process)."""
    from tumor_edge.export.tflite_export import float_reference, tflite_int8_accuracy_aware, tflite_probabilities

    saved, folder = saved_outlier
    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    val = _pixels(120, 2)
    reference = float_reference(saved, val, spec)
    assert len(set(reference.argmax(1))) == 4
    labels = reference.argmax(1)
    dst = folder / "model_int8.tflite"
    report = tflite_int8_accuracy_aware(saved, dst, _pixels(48, 1), val, labels, 4, spec,
                                        work_dir=folder).to_dict()

    assert {c["method"] for c in report["candidates"]} == {"per-channel", "per-tensor"}
    assert all(c["agreement"] < 0.9 for c in report["candidates"]), report["candidates"]  # naive int8 breaks
    assert report["holds"] and report["steps"][-1]["agreement"] >= 0.995
    units = [f["unit"] for f in report["float_nodes"]]
    assert len(units) == 1 and "conv2" in units[0], report["float_nodes"]
    assert any("conv1" in n for n in report["float_nodes"][0]["denylisted_nodes"])  # its input's producer too
    probs = tflite_probabilities(dst.read_bytes(), val, spec, folder)
    assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.995
    assert report["float_ops"] == ["SOFTMAX"]
    assert sorted(p.name for p in folder.iterdir()) == ["model_int8.tflite", "saved_model"]  # nothing left over


@pytest.mark.parametrize("accuracy_aware", [True, False])
def test_tflite_int8_converter_follows_the_accuracy_aware_option(saved_outlier, accuracy_aware, tmp_path):
    """The export's TFLite int8 converter, run for real on the model whose naive int8 breaks: with the option on,
    the float fallback repairs it; `--no-accuracy-aware` ships naive int8, as it does for the ONNX file."""
    from types import SimpleNamespace

    from tumor_edge.export.context import Pixels
    from tumor_edge.export.formats.tflite import convert_int8
    from tumor_edge.export.quantize import QuantizationConfig
    from tumor_edge.export.tflite_export import float_reference

    saved, _ = saved_outlier
    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    val, calib = _pixels(120, 2), _pixels(48, 1)
    keras_model = _keras_outlier_model()  # the same weights the SavedModel was exported from
    ctx = SimpleNamespace(  # the fields of the export context the converter reads, holding real data
        config=SimpleNamespace(tflite_full_integer=False,
                               quantization=QuantizationConfig(accuracy_aware=accuracy_aware)),
        calibration=lambda: Pixels(calib, np.zeros(len(calib), np.int32)), saved_model=lambda: saved,
        validation=lambda: Pixels(val, float_reference(saved, val, spec).argmax(1)), keras_model=keras_model,
        classes=["a", "b", "c", "d"], spec=spec, work=tmp_path)
    report = convert_int8(ctx, tmp_path / "model_int8.tflite")["_report"]

    assert all(c["agreement"] < 0.9 for c in report["candidates"]), report["candidates"]  # naive int8 breaks
    assert report["holds"] is accuracy_aware
    assert bool(report["float_nodes"]) is accuracy_aware, report["float_nodes"]


@pytest.mark.parametrize("cap, stall, steps_run, why", [
    (1.0, 2, 3, "brought the goal no closer"),  # step 1 comes nearest, steps 2 and 3 do not: stop there
    (0.5, 5, 2, "of the weighted ops in float"),  # the float cap (2 of 4 units) stops it first
])
def test_tflite_search_that_misses_its_goal_ships_the_nearest_candidate(saved_outlier, cap, stall, steps_run, why):
    """An unreachable goal (agreement above 100 %): more float units that bring it no closer are not shipped
    (they cost size and speed for nothing), and a stall ends the search before the cap."""
    from tumor_edge.export.quantize.config import ParityGoal
    from tumor_edge.export.tflite_export import TfliteInt8Config, tflite_int8_accuracy_aware

    saved, folder = saved_outlier
    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    val = _pixels(120, 2)
    out = folder / "search"
    out.mkdir(exist_ok=True)
    config = TfliteInt8Config(goal=ParityGoal(min_agreement=1.01), max_float_fraction=cap, stall_steps=stall)
    report = tflite_int8_accuracy_aware(saved, out / "model_int8.tflite", _pixels(48, 1), val, None, 4, spec,
                                        config=config, work_dir=out).to_dict()

    assert report["holds"] is False
    assert [s["float_units"] for s in report["steps"]] == list(range(1, steps_run + 1)), report["steps"]
    shortfalls = [s["shortfall"] for s in report["steps"]]
    assert shortfalls[0] == min(shortfalls) and shortfalls[0] < 0.1, report["steps"]  # conv2 float repairs it
    assert why in report["stopped"] and "shipping the nearest candidate, 1 unit(s) float" in report["stopped"]
    assert len(report["float_nodes"]) == 1 and "conv2" in report["float_nodes"][0]["unit"], report["float_nodes"]


def test_tflite_probing_stops_when_no_unit_moves_the_focus_images(saved_outlier):
    """conv1 float alone still hands conv2 the outlier in an int8 tensor, so its probe moves nothing: with a
    patience of one probe the search stops probing there, and the units it never probed follow in their own
    order (conv2 next), so the goal is still met, at one more float unit than a full probe would cost (the float
    cap lets 2 of the 4 units go float)."""
    from tumor_edge.export.tflite_export import TfliteInt8Config, float_reference, tflite_int8_accuracy_aware

    saved, folder = saved_outlier
    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    val = _pixels(120, 2)
    labels = float_reference(saved, val, spec).argmax(1)
    out = folder / "patience"
    out.mkdir(exist_ok=True)
    report = tflite_int8_accuracy_aware(saved, out / "model_int8.tflite", _pixels(48, 1), val, labels, 4, spec,
                                        config=TfliteInt8Config(probe_patience=1, max_float_fraction=0.5),
                                        work_dir=out).to_dict()

    assert [p["unit"] for p in report["probes"]] == [report["probes"][0]["unit"]]
    assert "conv1" in report["probes"][0]["unit"], report["probes"]
    assert report["holds"], report["steps"]
    units = [f["unit"] for f in report["float_nodes"]]
    assert len(units) == 2 and "conv1" in units[0] and "conv2" in units[1], units


def test_full_integer_int8_has_int8_io_and_runs_in_the_runtime(saved_outlier, tmp_path):
    """`--tflite-full-integer`: int8 input and output and every op int8, softmax included (accelerators), so the
    probabilities the runtime's LiteRT backend dequantizes come in steps of 1/256."""
    from ai_edge_litert.interpreter import Interpreter

    from tumor_edge.export.tflite_export import export_tflite_int8, representative_dataset, tflite_probabilities

    saved, _ = saved_outlier
    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    dst = export_tflite_int8(saved, tmp_path / "model_int8.tflite", representative_dataset(_pixels(48, 1), spec),
                             full_integer=True)
    interp = Interpreter(model_path=str(dst))
    assert [d["dtype"] for d in interp.get_input_details() + interp.get_output_details()] == [np.int8, np.int8]
    probs = tflite_probabilities(dst.read_bytes(), _pixels(40, 2), spec, tmp_path)
    assert probs.shape == (40, 4) and np.all(probs >= 0)
    np.testing.assert_allclose(probs * 256, np.round(probs * 256), atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.tflite"]
