"""tf.data pipelines over a pixel cache: uint8 batches read by index, sharded per worker, prefetched.

Batches stay uint8 (a quarter of float32's bytes) until the model's graph casts them. Under a distribution
strategy each worker's pipeline reads its own shard and batches by the per-replica batch size.
"""

from __future__ import annotations

import numpy as np


def index_dataset(cache, num_classes: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                  shard: tuple[int, int] = (1, 0), repeat: bool = False):
    """(uint8 images, one-hot labels) batches of `cache`; shard = (number of pipelines, this pipeline)."""
    import tensorflow as tf

    height, width, _ = cache.shape
    one_hot = np.eye(num_classes, dtype=np.float32)[cache.labels]

    def gather(idx: np.ndarray):
        return cache.read(idx), one_hot[idx]

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], [tf.uint8, tf.float32], stateful=False)
        x.set_shape([None, height, width, 3])
        y.set_shape([None, num_classes])
        return x, y

    ds = tf.data.Dataset.range(cache.count)
    count, index = shard
    if count > 1:
        ds = ds.shard(count, index)
    if shuffle:
        ds = ds.shuffle(max(1, cache.count // count + 1), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Sharding is done above, by index, so that a worker never reads another's images.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def steps_for(count: int, global_batch: int) -> int:
    return max(1, -(-count // global_batch))


def distributed_dataset(strategy, cache, num_classes: int, global_batch: int, shuffle: bool = False,
                        seed: int = 0, repeat: bool = False, distributed: bool = False):
    """The dataset `fit` takes: plain on one device, else one sharded pipeline per worker, per-replica batches."""
    if not distributed:
        return index_dataset(cache, num_classes, global_batch, shuffle, seed, repeat=repeat)

    def per_worker(context):
        batch = context.get_per_replica_batch_size(global_batch)
        return index_dataset(cache, num_classes, batch, shuffle, seed,
                             shard=(context.num_input_pipelines, context.input_pipeline_id), repeat=repeat)

    return strategy.distribute_datasets_from_function(per_worker)


def predict_probabilities(model, pixels: np.ndarray, batch_size: int = 32, chunk: int = 256) -> np.ndarray:
    """Keras probabilities for uint8 pixels, in order (no shuffling: rows stay aligned with their labels)."""
    return predict_chunks(model, ((s, pixels[s:s + chunk]) for s in range(0, len(pixels), chunk)), batch_size)


def predict_chunks(model, chunks, batch_size: int = 32) -> np.ndarray:
    """Probabilities for (start, uint8 images) chunks in order, e.g. `PixelCache.chunks()`: bounded memory."""
    out = [np.zeros((0, model.output_shape[-1]), dtype=np.float32)]
    for _, batch in chunks:
        out.append(np.asarray(model.predict(batch.astype(np.float32), batch_size=batch_size, verbose=0),
                              dtype=np.float32))
    return np.concatenate(out)
