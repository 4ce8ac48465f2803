"""ONNX files: fp32 through tf2onnx, fp16 through onnxruntime's converter, and the metadata each one carries.
The input is named "image" with a dynamic batch dimension, so one file serves any batch size."""

from __future__ import annotations

import json
from pathlib import Path

from tumor_edge.contracts.bundle import ONNX_META_KEY, BundleMetadata, ModelEntry

INPUT_NAME = "image"  # the bundle contract's (contracts.bundle.BundleMetadata.input_spec)
DEFAULT_OPSET = 17


def export_onnx_fp32(model, height: int, width: int, dst: Path, opset: int = DEFAULT_OPSET) -> Path:
    import gc

    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_NAME),)
    # What exists now (TensorFlow, Keras, the model: many objects) outlives the conversion: frozen, it is left
    # out of the collections `collecting_optimizers` runs before each pass, which then only walk the
    # conversion's own objects.
    gc.collect()
    gc.freeze()
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(dst),
                                   optimizers=collecting_optimizers())
    finally:
        gc.unfreeze()
    return dst


def collecting_optimizers() -> dict | None:
    """tf2onnx's own graph optimizers, each preceded by a garbage collection; None (tf2onnx's defaults) if this
    tf2onnx keeps its list elsewhere. Before every pass tf2onnx deep-copies the whole graph, and the discarded
    copies are reference cycles the collector does not reach on its own during the conversion: memory would grow
    by a graph copy per pass. Same optimizers, same order, same result."""
    import gc

    try:
        from tf2onnx.optimizer import _get_optimizers
    except ImportError:
        return None

    def collected(factory):
        def make():
            gc.collect()
            return factory()
        return make

    return {name: collected(factory) for name, factory in _get_optimizers().items()}


def export_onnx_fp16(src: Path, dst: Path) -> Path:
    """Weights and activations in float16, float32 input and output (so the runtime feeds it unchanged)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def onnx_metadata(metadata: BundleMetadata, file: str, precision: str) -> dict[str, str]:
    """The metadata_props a lone .onnx carries, enough for `Classifier.from_bundle(file.onnx)` to classify: the
    full metadata (minus what a file cannot hold about itself) as JSON under ONNX_META_KEY, plus a few plain keys
    for tools like Netron."""
    own = BundleMetadata(classes=metadata.classes, preprocessing=metadata.preprocessing, output=metadata.output,
                         models={file: ModelEntry(file, "onnx", precision)}, provenance=metadata.provenance,
                         metrics={}, name=metadata.name, intended_use=metadata.intended_use,
                         # every output role (the runtime binds them to metadata.json) and the calibration, so a
                         # lone file gives the bundle's probabilities and outputs
                         extra_outputs=dict(metadata.extra_outputs), calibration=metadata.calibration)
    data = own.to_dict()
    return {
        ONNX_META_KEY: json.dumps(data, sort_keys=True),
        "classes": ",".join(metadata.classes),
        "preprocessing": metadata.preprocessing.to_dict()["description"],
        "output": data["output"]["type"],
        "intended_use": metadata.intended_use,
    }
