"""The trust model (scores, heatmap, ood_features) converts with the product's own converters, and the
runtime's backends give Keras' outputs back from every file: ONNX fp32 and TFLite fp32 to float rounding,
TFLite int8 close.

int8 heatmaps: the mean per-map correlation with Keras' was 0.926 on this 16-channel toy CNN, the same with the
heatmap layer kept in float (measured): the error comes from the int8 conv features it reads, and averages
out over many channels. So this test holds the toy model to 0.9; the issue's 0.95 goal is for the product's
2048-channel InceptionV3, measured per file by export's parity."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trust_models import blob_cnn, blob_images
from tumor_edge.calibration.mahalanobis import fit_mahalanobis, score_projected
from tumor_edge.export.trust_outputs import map_correlation, trust_export
from tumor_edge.runtime.backends import BackendOptions, open_backend

pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from tumor_edge.export.formats.onnx import export_onnx_fp32
    from tumor_edge.export.tflite_export import export_saved_model, export_tflite_fp32, export_tflite_int8
    from tumor_edge.modelside.cam import features_model

    cnn, train = blob_cnn()
    val = blob_images(200, seed=21)
    ood = fit_mahalanobis(features_model(cnn).predict(val.pixels.astype(np.float32), verbose=0), val.labels)
    out = tmp_path_factory.mktemp("trust")
    exported = trust_export(cnn, {"calibration": {"temperature": 1.5}}, ood.save(out / "ood.npz"))
    model = exported.model
    assert [s.index for s in exported.extra_outputs.values()] == [1, 2] and exported.ood["dims"] == ood.dims
    size = train.pixels.shape[1]

    def representative():
        for image in train.pixels[:64]:
            yield [image[None].astype(np.float32)]

    saved = export_saved_model(model, out / "saved")
    files = {"onnx fp32": export_onnx_fp32(model, size, size, out / "model.onnx"),
             "tflite fp32": export_tflite_fp32(saved, out / "model.tflite"),
             "tflite int8": export_tflite_int8(saved, out / "model_int8.tflite", representative)}
    return model, ood, files


@pytest.mark.parametrize("name", ["onnx fp32", "tflite fp32", "tflite int8"])
def test_every_file_gives_keras_outputs(converted, name):
    model, ood, files = converted
    x = blob_images(24, seed=31).pixels.astype(np.float32)
    expected = model.predict(x, verbose=0)
    backend = open_backend(files[name], BackendOptions(cache=False))
    got = backend.run(x)
    assert [g.shape for g in got] == [e.shape for e in expected], "outputs in the Keras model's order"
    scores, cam, z = got
    if name.endswith("fp32"):
        for g, e in zip(got, expected):  # float32 rounding, relative to each output's scale
            np.testing.assert_allclose(g, e, rtol=0, atol=2e-4 * float(np.abs(e).max()) + 1e-5)
        return
    correlation = map_correlation(expected[1], cam)
    assert correlation >= 0.9, correlation
    assert np.mean(scores.argmax(1) == expected[0].argmax(1)) >= 0.95
    keras_scores, int8_scores = score_projected(expected[2], ood.centres), score_projected(z, ood.centres)
    # OOD flags: int8 rounding moves in-distribution distances a little (see mahalanobis.EIGEN_FLOOR)
    assert np.mean((int8_scores > ood.threshold) == (keras_scores > ood.threshold)) >= 0.85
    noise = np.random.default_rng(0).integers(0, 256, x.shape).astype(np.float32)
    assert np.all(score_projected(backend.run(noise)[2], ood.centres) > ood.threshold)


def test_metadata_with_trust_outputs_is_valid_and_round_trips(converted, tmp_path):
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.contracts.preprocessing import Preprocessing

    cnn = blob_cnn()[0]
    exported = trust_export(cnn, {}, None)
    meta = BundleMetadata(["none", "lesion"], Preprocessing(32, 32), extra_outputs=exported.extra_outputs)
    again = BundleMetadata.from_dict(meta.to_dict())
    assert again.outputs["heatmap"].index == 1 and "ood_features" not in again.outputs
    assert exported.ood is None and len(exported.model.outputs) == 2
    skipped = trust_export(cnn, {"calibration": {"method": None, "skipped": "16 validation images"}})
    assert skipped.calibration is None and skipped.notes == ["no calibration: 16 validation images"]


def test_foreign_head_is_exported_without_heatmap_and_says_why():
    import keras

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
    exported = trust_export(model)
    assert exported.model is model and not exported.extra_outputs
    assert "not global average pooling followed by one dense layer" in exported.notes[0]


def test_map_correlation_leaves_out_flat_maps():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 4, 4, 2))
    assert map_correlation(ref, ref) == pytest.approx(1.0)
    assert map_correlation(ref, -ref) == pytest.approx(-1.0)
    flat = ref.copy()
    flat[..., 1] = 7.0
    assert map_correlation(flat, flat + rng.normal(size=flat.shape)) < 1.0
    one_cell = rng.normal(size=(3, 1, 1, 2))  # a 75 px InceptionV3's grid: nothing spatial to compare
    assert map_correlation(one_cell, one_cell) is None


def test_bundle_with_heatmap_gives_overlays_at_the_lesion(converted, tmp_path):
    """A bundle of the converted ONNX file: the runtime's Classifier returns each scan's heatmap (role from the
    metadata), and HeatmapWriter draws it over the scan, hottest where the planted lesion is."""
    import shutil

    from PIL import Image

    from tumor_edge.contracts.bundle import BundleMetadata, describe_file
    from tumor_edge.contracts.preprocessing import Preprocessing
    from tumor_edge.errors import OutputExistsError
    from tumor_edge.runtime.classifier import Classifier
    from tumor_edge.runtime.explain import HeatmapWriter

    model, ood, files = converted
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(files["onnx fp32"], bundle / "model_fp32.onnx")
    exported = trust_export(blob_cnn()[0], {}, None)
    meta = BundleMetadata(["none", "lesion"], Preprocessing(32, 32), extra_outputs=exported.extra_outputs,
                          models={"model_fp32.onnx": describe_file(bundle / "model_fp32.onnx", "onnx", "fp32")})
    meta.write(bundle)
    scans = blob_images(8, seed=51)
    paths = []
    for i, pixels in enumerate(scans.pixels):
        paths.append(tmp_path / "scans" / f"scan {i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(paths[-1])
    writer = HeatmapWriter(tmp_path / "maps")
    predictions = Classifier.from_bundle(bundle).predict_batch(paths)
    written = [writer.write(p, pixels) for p, pixels in zip(predictions, scans.pixels)]
    assert all(p.outputs["heatmap"].shape == (16, 16, 2) for p in predictions)
    assert [w.name for w in written][:2] == ["00000_scan_0_heatmap.png", "00001_scan_1_heatmap.png"]
    for i in np.flatnonzero(scans.labels == 1):
        assert predictions[i].label == "lesion"
        picture = np.asarray(Image.open(written[i]).convert("RGB")).astype(int)
        left = (picture.shape[1] - 32) // 2  # the scan sits centred above the caption strip
        overlay = picture[:32, left:left + 32]
        redness = overlay[..., 0] - overlay[..., 2]
        r, c = np.unravel_index(np.argmax(redness), redness.shape)
        assert np.hypot(r - scans.centres[i][0], c - scans.centres[i][1]) <= 4, (i, (r, c), scans.centres[i])
    with pytest.raises(OutputExistsError):
        HeatmapWriter(tmp_path / "maps")
    HeatmapWriter(tmp_path / "maps", force=True)
    # heatmap parity as export records it: the file's maps through the runtime against Keras' (fp32: nearly identical)
    from tumor_edge.export.trust_outputs import heatmap_correlation
    from tumor_edge.runtime import Classifier

    reference = model.predict(scans.pixels.astype(np.float32), verbose=0)[1]
    clf = Classifier.from_bundle(bundle, model_file="model_fp32.onnx")
    assert heatmap_correlation(clf, reference, scans.pixels) > 0.999


def test_tflite_int8_float_reference_reads_the_scores_of_a_three_output_model(converted, tmp_path):
    """The accuracy-aware TFLite int8 search compares against the SavedModel's scores: with heatmap and OOD
    outputs, the signature's dict listed output_2 first (the exporter failed with a broadcast error)."""
    from tumor_edge.contracts.preprocessing import Preprocessing
    from tumor_edge.export.tflite_export import export_saved_model, float_reference

    model, _, _ = converted
    x = blob_images(6, seed=71).pixels
    saved = export_saved_model(model, tmp_path / "saved")
    np.testing.assert_allclose(float_reference(saved, x, Preprocessing(32, 32)),
                               model.predict(x.astype(np.float32), verbose=0)[0], atol=1e-5)


def test_one_cell_maps_are_exported_with_a_note():
    import keras

    inputs = keras.Input((4, 4, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 4)(inputs))  # a 1 x 1 map
    exported = trust_export(keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled)))
    assert "heatmap" in exported.extra_outputs
    assert any("1 x 1" in note for note in exported.notes)
