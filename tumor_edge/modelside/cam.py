"""Class activation maps (Zhou et al. 2016) as a second model output, exact and gradient-free.

InceptionV3's head is global average pooling then one dense layer, so for conv features F (h, w, C), dense
weights W (C, K) and bias b: logit_k = mean_hw(F) . W_k + b_k = mean_hw(F . W_k + b_k). The map
CAM_k(y, x) = F(y, x) . W_k + b_k is each location's evidence for class k, and its spatial mean IS the logit
(the bias only shifts a map, so the picture is Zhou et al.'s). So a 1x1 convolution holding the dense weights
turns the classifier into a two-output model (probabilities, maps of every class at the last conv map's
resolution) that tf2onnx and the TFLite converter convert like any other layer, and a device gets maps without
TensorFlow or gradients.

A model whose head is anything else (a second dense layer, attention, max pooling) has no exact map; it gets
`NoCamHeadError`, never an approximate picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tumor_edge.calibration.mahalanobis import OOD_ROLE
from tumor_edge.contracts.bundle import OutputSpec
from tumor_edge.errors import ModelError

HEATMAP_ROLE = "heatmap"
HEATMAP_TYPE = "class_activation_map"
# Layers that change nothing at inference between the pooling and the dense layer.
_PASS_THROUGH = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity")
_SCORE_ACTIVATIONS = ("softmax", "linear")


class NoCamHeadError(ModelError):
    """The model's head is not global average pooling followed by one dense layer: no exact heatmap."""


NO_HEAD_MESSAGE = ("this model's head is not global average pooling followed by one dense layer, so it has no "
                   "exact class activation map; export it without heatmaps")


@dataclass
class CamHead:
    features: Any  # symbolic tensor (N, h, w, C): the last conv map
    pooled: Any  # symbolic tensor (N, C): its global average
    dense: Any  # the Dense layer giving the class scores
    activation: str  # "softmax" | "linear"

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.features.shape[1]), int(self.features.shape[2])


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act))


def find_cam_head(model) -> CamHead:
    """The pooled conv map and dense layer behind a single-output Keras model's scores, or NoCamHeadError."""
    import keras

    def refuse(why: str) -> NoCamHeadError:
        return NoCamHeadError(f"{NO_HEAD_MESSAGE} ({why})")

    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        raise refuse(f"it has {len(outputs or [])} outputs, not one")
    layer = _producer(outputs[0])
    activation = None
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        activation = "softmax" if isinstance(layer, keras.layers.Softmax) else _activation_name(layer)
        layer = _producer(layer.input)
    if not isinstance(layer, keras.layers.Dense):
        raise refuse(f"the output comes from {type(layer).__name__}, not a Dense layer")
    dense = layer
    inner = _activation_name(dense)
    if activation is not None and inner != "linear":
        raise refuse(f"two activations ({inner}, then {activation})")
    activation = activation or inner
    if activation not in _SCORE_ACTIVATIONS:
        raise refuse(f"its scores use a {activation} activation, not softmax or none")
    layer = _producer(dense.input)
    while layer is not None and type(layer).__name__ in _PASS_THROUGH:
        layer = _producer(layer.input)
    if not isinstance(layer, keras.layers.GlobalAveragePooling2D):
        raise refuse(f"the dense layer reads {type(layer).__name__ if layer else 'the input'}, not a global "
                     f"average pooling")
    if getattr(layer, "keepdims", False) or getattr(layer, "data_format", "channels_last") != "channels_last":
        raise refuse("its pooling keeps dimensions or is channels-first")
    features = layer.input
    if len(features.shape) != 4 or features.shape[1] is None or features.shape[2] is None:
        raise refuse(f"the pooled map has shape {tuple(features.shape)}, not a fixed (N, h, w, C)")
    return CamHead(features, layer.output, dense, activation)


def _cam_layer(head: CamHead):
    """A 1x1 convolution with the dense weights: per-location contribution to each class logit."""
    import keras
    import numpy as np

    weights = head.dense.get_weights()
    kernel = np.asarray(weights[0], np.float32)
    bias = np.asarray(weights[1], np.float32) if head.dense.use_bias else np.zeros(kernel.shape[1], np.float32)
    h, w = head.grid
    channels, classes = kernel.shape
    conv = keras.layers.Conv2D(classes, 1, use_bias=True, dtype="float32", name=HEATMAP_ROLE)
    conv.build((None, h, w, channels))
    conv.set_weights([kernel.reshape(1, 1, channels, classes), bias])
    return conv


def features_model(model):
    """The pooled features (N, C) the dense head reads: what the Mahalanobis OOD score is fitted on."""
    import keras

    head = find_cam_head(model)
    return keras.Model(model.inputs, head.pooled, name=f"{model.name}_features")


def trust_model(model, ood=None):
    """The model export converts: [scores, heatmap] and, given a fitted `MahalanobisOod`, a third output
    "ood_features" = (pooled - mean) @ projection (a dense layer), so the device scores OOD with no big
    matrices. Raises NoCamHeadError for a model without a GAP + dense head."""
    import keras
    import numpy as np

    head = find_cam_head(model)
    outputs = [model.outputs[0], _cam_layer(head)(head.features)]
    if ood is not None:
        channels = int(head.pooled.shape[-1])
        if ood.projection.shape[0] != channels:
            raise NoCamHeadError(f"the OOD parameters were fitted on {ood.projection.shape[0]} features, but this "
                                 f"model pools {channels}")
        dense = keras.layers.Dense(ood.dims, dtype="float32", name=OOD_ROLE)
        dense.build((None, channels))
        dense.set_weights([ood.projection.astype(np.float32), (-ood.mean @ ood.projection).astype(np.float32)])
        outputs.append(dense(head.pooled))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_trust")


def heatmap_output_spec(index: int, grid: tuple[int, int]) -> OutputSpec:
    """How a bundle's metadata describes the heatmap output."""
    return OutputSpec(HEATMAP_ROLE, index, HEATMAP_TYPE,
                      f"class activation map of every class ({grid[0]}x{grid[1]} cells), layout (N, h, w, classes): "
                      f"each cell's contribution to the class logit; its spatial mean is the logit")
