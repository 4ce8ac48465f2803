"""The model `fit` runs: augmentation layers feeding the classifier, with what multi-worker training needs.

Two Keras defects stop `fit` under `MultiWorkerMirroredStrategy`: before the first step it reduces the nested
(images, labels) batch with `strategy.reduce`, which takes no nest, and after each step it reduces every scalar
metric along axis 0. `TrainingModel` builds from a local example batch instead and hands its metrics over as
1-vectors; both only in multi-worker mode.
"""

from __future__ import annotations

import keras
import numpy as np


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
    model.multi_worker = multi_worker
    num_classes = classifier.output_shape[-1]
    model.example = (np.zeros((1, *shape), np.uint8), np.zeros((1, num_classes), np.float32))
    return model


def barrier(strategy) -> None:
    """Wait for every worker (one all-reduce): the others stay up while the chief writes and evaluates, so no
    worker leaves the cluster while another still belongs to it."""
    import tensorflow as tf

    strategy.reduce("SUM", strategy.run(lambda: tf.ones([1])), axis=0)
