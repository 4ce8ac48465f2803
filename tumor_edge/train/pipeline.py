"""tf.data pipelines over pixels decoded once by the runtime's own preprocessing.

Images are decoded and resized a single time (tumor_edge.data.dataset.load_pixels, the exact code the device
runs) and kept in memory as uint8: that is the cache. Batches are gathered by index, augmented on the fly for
training only, and prefetched.
"""

from __future__ import annotations

import numpy as np


def make_dataset(pixels: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                 shuffle: bool = False, augmenter=None, seed: int = 0):
    import tensorflow as tf

    n = len(pixels)
    height, width = pixels.shape[1:3]
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]

    def gather(idx: np.ndarray):
        return pixels[idx], one_hot[idx]

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], [tf.uint8, tf.float32], stateful=False)
        x.set_shape([None, height, width, 3])
        y.set_shape([None, num_classes])
        return tf.cast(x, tf.float32), y

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        ds = ds.map(lambda x, y: (tf.clip_by_value(augmenter(x, training=True), 0.0, 255.0), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def predict_probabilities(model, pixels: np.ndarray, batch_size: int = 32, chunk: int = 256) -> np.ndarray:
    """Keras probabilities for uint8 pixels, in order (no shuffling: rows stay aligned with their labels)."""
    out = [np.zeros((0, model.output_shape[-1]), dtype=np.float32)]
    for start in range(0, len(pixels), chunk):
        batch = pixels[start:start + chunk].astype(np.float32)
        out.append(np.asarray(model.predict(batch, batch_size=batch_size, verbose=0), dtype=np.float32))
    return np.concatenate(out)
