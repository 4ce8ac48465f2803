"""InceptionV3 classifier whose graph takes raw RGB 0..255 pixels.

The InceptionV3 scaling (x/127.5 - 1) is a layer inside the model, so every exported file takes the same
un-scaled pixels and the bundle's preprocessing is just "decode, resize": nothing left to drift on the device.
"""

from __future__ import annotations

from pathlib import Path

from tumor_edge.errors import TumorEdgeError, first_line

MIN_IMAGE_SIZE = 75  # InceptionV3's smallest input
IMAGENET_NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"



def resolve_weights(weights: str | None) -> str | None:
    """Normalise --weights; fail early with advice rather than deep inside Keras."""
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TumorEdgeError("weights file not found (use --weights imagenet, none, or a .h5/.weights.h5 file)",
                             path)
    return str(path)


IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
                      + IMAGENET_NOTOP_FILE)
IMAGENET_NOTOP_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"


def ensure_imagenet_weights() -> Path:
    """Fetch (or find in Keras' cache) the ImageNet no-top weights before anything is written: tumor-edge's only
    network access, and only when asked for."""
    from keras.utils import get_file

    try:
        return Path(get_file(IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_URL, cache_subdir="models",
                             file_hash=IMAGENET_NOTOP_MD5))
    except Exception as err:  # Keras raises a bare Exception("URL fetch failure ...")
        raise TumorEdgeError(
            "could not download the ImageNet weights for InceptionV3 (no internet?): train from scratch with "
            f"--weights none, or pass --weights PATH/{IMAGENET_NOTOP_FILE} (Keras caches it under "
            f"~/.keras/models/ once downloaded) [{first_line(err, 120)}]"
        ) from err


def _base(image_size: int, weights: str | None):
    import keras

    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        weights = str(ensure_imagenet_weights())
    try:
        return keras.applications.InceptionV3(include_top=False, weights=weights, input_shape=shape)
    except Exception as err:
        if weights is not None:
            raise TumorEdgeError(f"cannot load these weights into InceptionV3 ({first_line(err)})", weights) from err
        raise


def build_classifier(num_classes: int, image_size: int = 299, weights: str | None = None, dropout: float = 0.3,
                     bn_momentum: float | None = None):
    """Rescaling -> InceptionV3 (no top) -> global average pooling -> dropout -> softmax (float32); a pretrained
    base runs in inference mode (`set_fine_tune`), a base from scratch trains its BatchNorm statistics."""
    import keras

    if image_size < MIN_IMAGE_SIZE:
        raise TumorEdgeError(f"--image-size must be at least {MIN_IMAGE_SIZE} for InceptionV3, got {image_size}")
    weights = resolve_weights(weights)
    base = _base(image_size, weights)
    if bn_momentum is not None:  # None keeps Keras' 0.99
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="inception_scaling")(inputs)
    x = base(x, training=False) if weights is not None else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="tumor_edge_inception_v3")
    model.pretrained = weights is not None  # read by the fitting schedule
    return model


def set_fine_tune(model, fine_tune_from: int | None) -> int:
    """Freeze the base below layer index `fine_tune_from` (None: freeze all). Returns trainable base layers.

    BatchNormalization layers stay frozen above the cut too. Keras 3 overrides the `training=False` stored in
    the functional graph with fit()'s `training=True` (keras-team/keras#20285), so a trainable BatchNorm would
    normalise with batch statistics and move its moving averages, whereas a non-trainable one runs in inference
    mode: the pretrained statistics are kept, and training and inference see the same network.
    """
    import keras

    base = model.get_layer("inception_v3")
    if fine_tune_from is None:
        base.trainable = False
        return 0
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= fine_tune_from and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable)
