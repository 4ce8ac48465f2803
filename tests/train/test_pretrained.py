"""The pretrained two-phase path (`--weights FILE`): BatchNorm stays frozen in phase 2, the top of the base
learns, and phase 2 starts from phase 1's best weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train.conftest import PRETRAINED_SIZE

pytestmark = pytest.mark.slow


def _base_layers(model):
    return model.get_layer("inception_v3").layers


# The same two-phase checks on every Keras backend train runs on: TensorFlow in this process, JAX in its own
# (tests/train/conftest.py: jax_run, with TensorFlow unimportable there). TensorFlow reads both model.keras files.
RUNS = {"tensorflow": "pretrained_run", "jax": "jax_run"}


@pytest.fixture(scope="module", params=sorted(RUNS))
def reference_and_trained(request, notop_weights):
    import keras

    run, _ = request.getfixturevalue(RUNS[request.param])
    reference = keras.applications.InceptionV3(include_top=False, weights=str(notop_weights),
                                               input_shape=(PRETRAINED_SIZE, PRETRAINED_SIZE, 3))
    trained = keras.models.load_model(run / "model.keras", compile=False)
    return reference.layers, _base_layers(trained)


def test_phase_two_won_and_is_recorded(pretrained_run):
    run, output = pretrained_run
    config = json.loads((run / "config.json").read_text())
    assert [p["phase"] for p in config["phases"]] == ["head", "fine-tune"]
    assert config["best_checkpoint"]["best_phase"] == "fine-tune", config["best_checkpoint"]
    assert config["best_checkpoint"]["monitor"] == "loss"  # no validation part
    assert "phase 2 starts from phase 1's best epoch" in output
    assert all(p["steps_skipped"] == 0 and p["updates_applied"] == p["steps"] > 0 for p in config["phases"])
    assert config["precision"]["policy"] == "float32"
    assert config["distribution"]["replicas"] == 1


def test_batchnorm_statistics_are_unchanged_after_phase_two(reference_and_trained):
    """Keras 3 runs a trainable BatchNorm in training mode inside fit() even under `base(x, training=False)`
    (keras-team/keras#20285): its moving averages would drift towards the fine-tuning batches."""
    import keras

    reference, trained = reference_and_trained
    checked = 0
    for ref, new in zip(reference, trained, strict=True):
        if isinstance(ref, keras.layers.BatchNormalization):
            for a, b in zip(ref.non_trainable_weights, new.non_trainable_weights, strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{ref.name}: {a.path}")
                checked += 1
    assert checked == 2 * 94  # InceptionV3's 94 BatchNorm layers: moving mean and variance each


def test_unfrozen_convolutions_learned_and_frozen_ones_did_not(reference_and_trained):
    import keras

    reference, trained = reference_and_trained
    changed, frozen_same = [], []
    for i, (ref, new) in enumerate(zip(reference, trained, strict=True)):
        if isinstance(ref, keras.layers.Conv2D):
            same = np.array_equal(np.asarray(ref.kernel), np.asarray(new.kernel))
            (frozen_same if i < 249 else changed).append(same if i < 249 else not same)
    assert changed and all(changed), "every convolution from layer 249 should have moved in phase 2"
    assert frozen_same and all(frozen_same), "convolutions below layer 249 must stay frozen"


def test_pretrained_run_evaluates(pretrained_run):
    run, _ = pretrained_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 40 and 0.0 <= metrics["accuracy"] <= 1.0
