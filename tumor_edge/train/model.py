"""The Keras side of training: the InceptionV3 classifier whose graph takes raw RGB 0..255 pixels, the model `fit`
runs, the batches it reads on JAX and PyTorch, the best checkpoint across both phases, and step times. Keras
loads with this module: import it only once the backend is chosen.

The InceptionV3 scaling (x/127.5 - 1) is a layer inside the model, so every exported file takes the same
un-scaled pixels and the bundle's preprocessing is just "decode, resize": nothing left to drift on the device.

Two Keras defects stop `fit` under `MultiWorkerMirroredStrategy`: before the first step it reduces the nested
(images, labels) batch with `strategy.reduce`, which takes no nest, and after each step it reduces every scalar
metric along axis 0. `TrainingModel` builds from a local example batch instead and hands its metrics over as
1-vectors; both only in multi-worker mode.

Keras' ModelCheckpoint would save the training wrapper, keep the best only on disk (which phase 2 and other
workers cannot read) and write on every worker. `BestWeights` keeps the best weights in memory on every worker,
says which epoch and phase won, and lets only the chief write the checkpoint.

`CacheBatches` feeds JAX and PyTorch from the pixel cache, no TensorFlow. Training batches are always full (the
last one of an epoch is topped up from the epoch's order), so every step has one shape and JAX compiles it once.
On several devices validation keeps a multiple of the device count (JAX splits a batch evenly), dropping at most
devices - 1 images.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tumor_edge.errors import TumorEdgeError, first_line
from tumor_edge.train.backends import peak_device_bytes

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
    the functional graph with fit()'s `training=True`, so a trainable BatchNorm would normalise with batch
    statistics and move its moving averages, whereas a non-trainable one runs in inference mode: the pretrained
    statistics are kept, and training and inference see the same network.
    """
    base = model.get_layer("inception_v3")
    if fine_tune_from is None:
        base.trainable = False
        return 0
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= fine_tune_from and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable)


def monitor_mode(monitor: str) -> str:
    return "max" if monitor.endswith(("auc", "accuracy")) else "min"


class BestWeights(keras.callbacks.Callback):
    """Tracks the best `monitor` value over every `fit` it is given to; the classifier's weights at that epoch."""

    def __init__(self, classifier, monitor: str, save: Callable[[object], None] | None = None):
        super().__init__()
        self.classifier = classifier
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        self.save = save  # None on non-chief workers
        self.phase = ""
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_phase: str | None = None
        self.weights: list | None = None

    def _better(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or not self._better(float(value)):
            return
        self.best, self.best_epoch, self.best_phase = float(value), epoch, self.phase
        self.weights = self.classifier.get_weights()
        if self.save is not None:
            self.save(self.classifier)

    def restore(self) -> bool:
        """Put the best weights back into the classifier; False when no epoch produced a finite value."""
        if self.weights is None:
            return False
        self.classifier.set_weights(self.weights)
        return True

    def summary(self) -> dict:
        return {"monitor": self.monitor, "best_value": self.best,
                "best_epoch": None if self.best_epoch is None else self.best_epoch + 1,
                "best_phase": self.best_phase}


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, from one step's end to the next (loading, augmentation, the step, all
    of it), the loss read back so that an asynchronous backend has finished the step. The first step of each
    `fit` holds the tracing and compiling (JAX/XLA, TensorFlow's graph) and is reported apart."""

    def __init__(self, global_batch: int, backend: str):
        super().__init__()
        self.global_batch = global_batch
        self.backend = backend
        self.first_steps: list[float] = []
        self.steps: list[float] = []
        self._last: float | None = None
        self._first = True

    @property
    def count(self) -> int:
        """Training steps run; against the optimizer's `iterations` (updates applied), the steps skipped."""
        return len(self.first_steps) + len(self.steps)

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None  # validation and callbacks between epochs are not a step

    def on_train_batch_begin(self, batch, logs=None):
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None:
            keras.ops.convert_to_numpy(loss)  # wait for the step itself
        now = time.perf_counter()
        took, self._last = now - (self._last or now), now
        (self.first_steps if self._first else self.steps).append(took)
        self._first = False

    def summary(self) -> dict:
        median = statistics.median(self.steps) if self.steps else None
        return {"global_batch": self.global_batch, "first_step_s": [round(t, 3) for t in self.first_steps],
                "steps_timed": len(self.steps), "median_step_s": None if median is None else round(median, 5),
                "images_per_s": None if not median else round(self.global_batch / median, 1),
                "peak_device_bytes": peak_device_bytes(self.backend)}


class TrainingModel(keras.Model):
    """Functional model with the two multi-worker work-arounds; `example` is one local batch (shape, dtype)."""

    multi_worker = False
    example = None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not self.multi_worker:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=self.example)

    def _vectors(self, logs):
        if not self.multi_worker:
            return logs
        import tensorflow as tf

        return {k: tf.reshape(v, [1]) for k, v in logs.items()}

    def train_step(self, data):
        return self._vectors(super().train_step(data))

    def test_step(self, data):
        return self._vectors(super().test_step(data))


def training_model(classifier, augmenter, multi_worker: bool = False) -> keras.Model:
    """image (0..255) -> augmentation (training only) -> classifier. Build inside the strategy's scope."""
    shape = classifier.input_shape[1:]
    inputs = keras.Input(shape, dtype="float32", name="image")
    outputs = classifier(augmenter(inputs) if augmenter is not None else inputs)
    if not multi_worker:  # a plain Model: JAX's and PyTorch's trainers have their own train_step signatures
        return keras.Model(inputs, outputs, name="training")
    model = TrainingModel(inputs, outputs, name="training")
    model.multi_worker = True
    num_classes = classifier.output_shape[-1]
    model.example = (np.zeros((1, *shape), np.uint8), np.zeros((1, num_classes), np.float32))
    return model


def barrier(strategy) -> None:
    """Wait for every worker (one all-reduce): the others stay up while the chief writes and evaluates, so no
    worker leaves the cluster while another still belongs to it."""
    import tensorflow as tf

    strategy.reduce("SUM", strategy.run(lambda: tf.ones([1])), axis=0)


class CacheBatches(keras.utils.PyDataset):
    """(uint8 images, float32 one-hot labels) batches of a `PixelCache`."""

    def __init__(self, cache, num_classes: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                 multiple: int = 1, workers: int | None = None):
        workers = max(1, min(8, os.cpu_count() or 1)) if workers is None else workers
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
        if multiple > 1 and not shuffle and cache.count < multiple:
            raise ValueError(f"{cache.count} images cannot be split over {multiple} devices")
        self.cache = cache
        self.one_hot = np.eye(num_classes, dtype=np.float32)[cache.labels]
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.multiple = max(1, int(multiple))
        self.rng = np.random.default_rng(seed)
        self.order = self._new_order()
        # validation over several devices: the images that split evenly (the batch size is a multiple too)
        self.count = cache.count if shuffle else cache.count - cache.count % self.multiple

    def _new_order(self) -> np.ndarray:
        count = self.cache.count
        return self.rng.permutation(count) if self.shuffle else np.arange(count)

    def __len__(self) -> int:
        return max(1, -(-self.count // self.batch_size))

    def __getitem__(self, index: int):
        start = index * self.batch_size
        idx = self.order[start:min(start + self.batch_size, self.count)]
        if self.shuffle and len(idx) < self.batch_size:  # top up: one step shape for the whole run
            idx = np.resize(np.concatenate([idx, self.order]), self.batch_size)
        return self.cache.read(idx), self.one_hot[idx]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self._new_order()
