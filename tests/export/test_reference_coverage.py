"""The reference images a bundle records are the generated set that drives the int8 file's activations highest in
their calibrated ranges, so a device whose int8 kernels saturate near the top of a range shows it in verify."""

from __future__ import annotations

import numpy as np

from tests.export.test_quantize_accuracy_aware import SIZE, _outlier_model, _pixels
from tumor_edge.contracts.preprocessing import Preprocessing


def test_the_recorded_seed_reaches_highest_and_the_codes_are_the_quantizers(tmp_path):
    import onnx
    from onnx import numpy_helper

    from tumor_edge.export.quantize import QuantizationConfig, quantize_onnx_int8
    from tumor_edge.export.quantize.scoring import activation_codes, top_code_fractions
    from tumor_edge.runtime import brain_blobs, scale

    spec = Preprocessing(SIZE, SIZE, scaling="unit")
    fp32 = _outlier_model(tmp_path / "model_fp32.onnx")
    val = _pixels(100, 2)
    labels = np.zeros(100, int)
    work = tmp_path / "work"
    work.mkdir()
    dst = tmp_path / "model_int8.onnx"
    report = quantize_onnx_int8(fp32, dst, _pixels(64, 1), val, labels, 4, spec,
                                QuantizationConfig(methods=("minmax",), accuracy_aware=False), work, False)
    chosen = report.to_dict()["reference_images"]
    tried = {int(k): v for k, v in chosen["seeds_tried"].items()}
    assert len(tried) > 1 and chosen["seed"] in tried and tried[chosen["seed"]] == max(tried.values())
    assert chosen["count"] == 16 and chosen["activations"] > 0 and 0 < chosen["median_top_code"] <= 1

    # The input's quantizer, by hand: the largest code the images reach is round(max pixel / scale) + zero point.
    model = onnx.load(str(dst))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    first = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants)
    images = brain_blobs(chosen["seed"], 16, SIZE, SIZE)
    step, zero = float(constants[first.input[1]]), int(constants[first.input[2]])
    by_hand = min(255, int(np.rint(float(scale(images, spec).max()) / step)) + zero)
    codes = activation_codes(dst, images, spec)
    assert codes[first.output[0]] == (by_hand, zero)
    assert np.all((top_code_fractions(codes) >= 0) & (top_code_fractions(codes) <= 1))


def test_the_bundle_records_its_reference_on_the_seed_the_int8_report_chose(exported_bundle):
    """The seed the int8 quantizer measured as reaching highest is the one the bundle's reference (what verify
    regenerates on a device) is taken on."""
    from tumor_edge.contracts.bundle import BundleMetadata

    metadata = BundleMetadata.read(exported_bundle)
    chosen = metadata.metrics["onnx_int8_calibration"]["reference_images"]["seed"]
    assert metadata.reference.seed == chosen


def test_a_new_reference_takes_the_chosen_seed_from_the_metadata():
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.export.reference import DEFAULT_SEED, new_reference

    metadata = BundleMetadata(classes=["a", "b"], preprocessing=Preprocessing(32, 32), output="probabilities")
    assert new_reference(metadata)[0].seed == DEFAULT_SEED  # no int8 file measured one
    metadata.metrics = {"onnx_int8_calibration": {"reference_images": {"seed": DEFAULT_SEED + 3}}}
    reference, images = new_reference(metadata)
    assert reference.seed == DEFAULT_SEED + 3 and len(images) == reference.count
