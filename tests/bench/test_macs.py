"""MACs counted from an ONNX graph, against a hand count and against an independent count from Keras layers."""

from __future__ import annotations

from pathlib import Path

from tests.bench.conftest import TINY_HEATMAP_MACS, TINY_MACS
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata
from tumor_edge.contracts.formats import BY_KEY
from tumor_edge.contracts.run_folder import RunFolder

FP32 = BY_KEY["onnx-fp32"].file
INT8 = BY_KEY["onnx-int8"].file


def test_count_macs_matches_the_hand_count(tiny_onnx, exported_bundle):
    from tumor_edge.bench.analysis import count_macs, macs_by_node

    assert count_macs(tiny_onnx / FP32) == TINY_MACS + TINY_HEATMAP_MACS
    assert count_macs(tiny_onnx / INT8) == TINY_MACS + TINY_HEATMAP_MACS  # QDQ keeps the Conv/MatMul nodes
    assert count_macs(tiny_onnx / METADATA_FILE) is None  # not a model: no count, no crash
    # The session's InceptionV3 as export converts it (with its heatmap and OOD-feature heads), counted
    # independently from its Keras layers. Its int8 file does the same work plus the depthwise convolutions that
    # stand in for its average pools, minus the kernel taps the int8 recipe crops because they only ever read
    # padding (3x3, 1x3 and 3x1 convolutions on the last blocks' 1x1 maps at 75 px; export/quantize/graph.py).
    fp32 = count_macs(exported_bundle / FP32)
    assert fp32 == _keras_macs(_converted_model(exported_bundle))
    int8 = macs_by_node(exported_bundle / INT8)
    pools = {name: macs for name, macs in int8.items() if name.endswith("__depthwise")}
    assert pools and all(macs > 0 for macs in pools.values())
    cropped = fp32 - (sum(int8.values()) - sum(pools.values()))
    assert 0 <= cropped < 0.15 * fp32, (cropped, fp32)


def _converted_model(bundle: Path):
    """The Keras model export converted: the run's classifier plus the trust outputs its head allows."""
    import keras

    from tumor_edge.export.trust_outputs import trust_export

    run = RunFolder(Path(BundleMetadata.read(bundle).provenance["run_dir"]))
    model = keras.models.load_model(run.model, compile=False)
    return trust_export(model, run.read_config().extra, run.ood_params).model


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
