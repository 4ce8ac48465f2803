"""Fast checks of the training parts that need no trained model: precision choice, loss-scale accounting,
cluster description, best-weights bookkeeping, the index pipeline and the fine-tuning freeze."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tumor_edge.errors import ConfigError
from tumor_edge.train.backends import choose_precision
from tumor_edge.train.distribute import cluster_from_flags, is_chief, read_cluster


@pytest.mark.parametrize(("requested", "gpus", "flags", "policy"), [
    ("auto", 1, set(), "mixed_float16"),
    ("auto", 0, {"avx512f", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),
    ("auto", 0, {"avx512f", "avx512_bf16"}, "float32"),  # measured no faster than float32 without AMX
    ("auto", 0, {"avx2"}, "float32"),
    ("off", 1, {"amx_bf16"}, "float32"),
    ("bfloat16", 0, set(), "mixed_bfloat16"),
    ("float16", 0, set(), "mixed_float16"),
])
def test_precision_choice(requested, gpus, flags, policy):
    choice = choose_precision(requested, gpus, flags)
    assert choice.policy == policy and choice.mixed == (policy != "float32")


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown mixed precision"):
        choose_precision("fp8", 0, set())


def test_loss_scale_skipped_steps_are_counted():
    """float16 loss scaling starts at 2**15: gradients of a large loss overflow, the update is skipped, and the
    optimizer's own count (what `fit_phases` reports against the steps run) says so."""
    import keras

    from tumor_edge.train.backends import applied_updates
    from tumor_edge.train.model import StepTimer

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype="float32")])
        inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), model])
        inner.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        timer = StepTimer(4, "tensorflow")
        x = np.full((8, 4), 3e4, np.float32)
        inner.fit(x, np.full((8, 3), 6e4, np.float32), batch_size=4, epochs=1, verbose=0, callbacks=[timer])
        assert timer.count == 2
        assert applied_updates(inner.optimizer) < timer.count
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_cluster_from_flags_and_tf_config():
    config = cluster_from_flags(["127.0.0.1:2222", "127.0.0.1:2223"], 1)
    assert config == {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]},
                      "task": {"type": "worker", "index": 1}}
    assert read_cluster({"TF_CONFIG": json.dumps(config)}) == config
    assert not is_chief(config) and is_chief({**config, "task": {"type": "worker", "index": 0}})
    assert is_chief({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}})
    assert not is_chief({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}})
    assert read_cluster({}) is None and is_chief(None)
    with pytest.raises(ConfigError, match="task index must be 0..1"):
        cluster_from_flags(["a:1", "b:2"], 2)
    with pytest.raises(ConfigError, match="not host:port"):
        cluster_from_flags(["a"], 0)
    with pytest.raises(ConfigError, match="TF_CONFIG is not a valid"):
        read_cluster({"TF_CONFIG": "{not json"})


def test_worker_flags_are_checked_in_one_line(tmp_path):
    from click.testing import CliRunner

    from tumor_edge.cli import main

    result = CliRunner().invoke(main, ["train", str(tmp_path), "--worker-hosts", "a:1,b:2"])
    assert result.exit_code == 2 and "--worker-hosts and --task-index go together" in result.output


def test_best_weights_keep_the_best_epoch_and_restore_it():
    import keras

    from tumor_edge.train.model import BestWeights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    saved = []
    best = BestWeights(model, "val_loss", save=lambda m: saved.append(m.get_weights()[0].copy()))
    best.phase = "head"
    for epoch, (value, fill) in enumerate([(1.0, 1.0), (0.5, 2.0), (0.7, 3.0), (float("nan"), 4.0)]):
        model.set_weights([np.full((2, 1), fill, np.float32), np.zeros(1, np.float32)])
        best.on_epoch_end(epoch, {"val_loss": value})
    assert best.summary() == {"monitor": "val_loss", "best_value": 0.5, "best_epoch": 2, "best_phase": "head"}
    assert len(saved) == 2  # only improvements are written
    assert best.restore() and np.all(model.get_weights()[0] == 2.0)
    assert BestWeights(model, "val_auc").mode == "max"


def test_index_pipeline_is_uint8_and_shards_are_disjoint(tmp_path):
    from tumor_edge.data.dataset import PixelCache, Sample
    from tumor_edge.train.fit import index_dataset

    n, shape = 10, (3, 3, 3)
    pixels = (np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(shape, np.uint8))
    path = tmp_path / "px.u8"
    path.write_bytes(pixels.tobytes())
    cache = PixelCache(path, shape, np.arange(n, dtype=np.int32) % 2, [Sample(tmp_path, 0)] * n)
    seen = []
    for worker in range(2):
        ds = index_dataset(cache, 2, 3, shuffle=True, seed=1, shard=(2, worker))
        for x, y in ds:
            assert x.dtype.name == "uint8" and y.shape[1] == 2
            ids = x.numpy()[:, 0, 0, 0].tolist()
            assert all(np.argmax(row) == i % 2 for row, i in zip(y.numpy(), ids))
            seen.append((worker, ids))
    per_worker = [sorted(i for w, ids in seen if w == k for i in ids) for k in range(2)]
    assert per_worker == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_fine_tune_unfreezes_the_top_but_never_batchnorm():
    import keras

    from tumor_edge.train.model import build_classifier, set_fine_tune

    model = build_classifier(4, 75, None)
    assert set_fine_tune(model, None) == 0 and not model.get_layer("inception_v3").trainable
    trainable = set_fine_tune(model, 249)
    layers = model.get_layer("inception_v3").layers
    assert trainable == sum(1 for layer in layers[249:] if not isinstance(layer, keras.layers.BatchNormalization))
    assert not any(layer.trainable for layer in layers[:249])
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))
    assert any(isinstance(layer, keras.layers.Conv2D) and layer.trainable for layer in layers[249:])


def test_cosine_schedule_ends_each_phase_at_one_percent_and_replaces_plateau_cuts(tmp_path):
    """`--lr-schedule cosine`: the rate falls from the phase's rate to 1 % of it by its last step, and Keras'
    ReduceLROnPlateau (which cannot set a rate a schedule owns) is left out; `plateau` keeps a constant rate
    and the callback. An unknown name is a one-line config error."""
    import keras

    from tumor_edge.train.backends import check_lr_schedule, learning_rate_for
    from tumor_edge.train.fit import TrainConfig, _callbacks

    cosine = learning_rate_for("cosine", 1e-3, epochs=10, steps_per_epoch=72)
    assert float(cosine(0)) == pytest.approx(1e-3)
    assert float(cosine(360)) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-4)
    assert float(cosine(720)) == pytest.approx(1e-5, rel=1e-4)
    assert learning_rate_for("plateau", 1e-3, 10, 72) == 1e-3

    def kinds(schedule: str) -> set[str]:
        config = TrainConfig(data=tmp_path, lr_schedule=schedule, patience=4)
        return {type(c).__name__ for c in _callbacks(config, "val_loss", None)}

    assert kinds("cosine") == {"EarlyStopping"}
    assert kinds("plateau") == {"EarlyStopping", "ReduceLROnPlateau"}
    assert isinstance(cosine, keras.optimizers.schedules.CosineDecay)
    with pytest.raises(ConfigError, match="unknown --lr-schedule 'step'; choose plateau, cosine"):
        check_lr_schedule("step")
