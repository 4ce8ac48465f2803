"""MACs counted from an ONNX graph, against a hand count and against an independent count from Keras layers."""

from __future__ import annotations

from pathlib import Path

from tests.bench.conftest import TINY_MACS
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata
from tumor_edge.contracts.formats import BY_KEY
from tumor_edge.contracts.run_folder import RunFolder

FP32 = BY_KEY["onnx-fp32"].file
INT8 = BY_KEY["onnx-int8"].file


def test_count_macs_matches_the_hand_count(tiny_onnx, exported_bundle):
    from tumor_edge.bench.macs import count_macs

    assert count_macs(tiny_onnx / FP32) == TINY_MACS
    assert count_macs(tiny_onnx / INT8) == TINY_MACS  # QDQ keeps the Conv/MatMul nodes
    assert count_macs(tiny_onnx / METADATA_FILE) is None  # not a model: no count, no crash
    # The session's InceptionV3, counted independently from its Keras layers; its int8 file has the same count.
    assert count_macs(exported_bundle / FP32) == _keras_macs(_run_model(exported_bundle))
    assert count_macs(exported_bundle / INT8) == count_macs(exported_bundle / FP32)


def _run_model(bundle: Path):
    import keras

    run = RunFolder(Path(BundleMetadata.read(bundle).provenance["run_dir"]))
    return keras.models.load_model(run.model, compile=False)


def _keras_macs(model) -> int:
    """Conv2D: output H*W*C_out x kernel h*w*C_in; Dense: in*out; nested models walked."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _keras_macs(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, _ = layer.kernel.shape
            _, h, w, cout = layer.output.shape
            total += h * w * cout * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return total
