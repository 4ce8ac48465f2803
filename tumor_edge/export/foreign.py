"""Loading and checking a classifier made outside tumor-edge: a .keras/.h5 file or a TensorFlow SavedModel.

What cannot be read from the model the user says (class names, scaling); what can be checked is checked: the
class count against the output width, the image size against the input shape, one NHWC RGB input.
"""

from __future__ import annotations

from pathlib import Path

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import ModelError, first_line

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SAVED_MODEL_FILE = "saved_model.pb"


def load_keras(path: Path):
    import keras

    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, zipfile/h5py errors, TypeError...
        raise ModelError(f"Keras cannot load this model ({first_line(err, 240)})", path) from err


def load_saved_model(path: Path, image_size: int | None):
    """A SavedModel's serving signature wrapped as a Keras model (Keras 3 cannot load SavedModels directly)."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except Exception as err:
        raise ModelError(f"TensorFlow cannot load this SavedModel ({first_line(err, 240)})", path) from err
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ModelError("the SavedModel's serving signature must take one NHWC image tensor", path)
    shape = list(specs[0].shape)
    h = shape[1] if shape[1] is not None else image_size
    w = shape[2] if shape[2] is not None else image_size
    if h is None or w is None:
        raise ModelError("the SavedModel's input size is not fixed: give the image size", path)
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inputs = keras.Input((h, w, shape[3] or 3), name="image")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ModelError(f"the SavedModel has {len(outputs)} outputs; export needs one", path)
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def load_model_file(path: Path, kind: str, image_size: int | None):
    """The model as its maker saved it: kind "keras" (a file) or "savedmodel" (a folder)."""
    return load_keras(path) if kind == "keras" else load_saved_model(path, image_size)


def input_hw(model, path: Path) -> tuple[int | None, int | None]:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(model.inputs) != 1 or len(shape) != 4:
        raise ModelError(f"expected one image input of rank 4 (N, H, W, 3), the model takes {shape}", path)
    if shape[3] != 3:
        raise ModelError(f"the model takes {shape[3]}-channel input; bundles are RGB NHWC (channels last)", path)
    return shape[1], shape[2]


def check_io(model, path: Path, classes: list[str], spec: Preprocessing) -> None:
    """Class count against the output width; image size against the input shape."""
    if len(model.outputs) != 1:
        raise ModelError(f"the model has {len(model.outputs)} outputs; export needs one", path)
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2:
        raise ModelError(f"the model's output has shape {out_shape}; expected (batch, classes)", path)
    if out_shape[-1] != len(classes):
        raise ModelError(f"the model has {out_shape[-1]} outputs but {len(classes)} classes were given "
                         f"({', '.join(classes)})", path)
    h, w = input_hw(model, path)
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        raise ModelError(f"the model takes {h}x{w} images but the preprocessing says "
                         f"{spec.height}x{spec.width}", path)


__all__ = ["KERAS_SUFFIXES", "SAVED_MODEL_FILE", "check_io", "input_hw", "load_keras", "load_model_file",
           "load_saved_model"]
