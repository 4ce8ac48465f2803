"""The Mahalanobis OOD score and its validation-fitted threshold on a real model's in-distribution scans against
scans it was never trained on, and the energy of its logits on the same scans (why Mahalanobis is the default)."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.calibration.mahalanobis import (
    MahalanobisOod,
    fit_mahalanobis,
    fit_output_threshold,
    output_score,
    score_projected,
)


@pytest.fixture(scope="module")
def blob_ood():
    """The blob CNN's pooled features on validation, held-out, and never-seen inputs (noise, inverted scans,
    smooth random fields, a constant grey), with the Mahalanobis fit on validation at tpr 0.95."""
    from tests.trust_models import blob_cnn, blob_images
    from tumor_edge.modelside.cam import features_model, trust_model

    cnn = blob_cnn()[0]
    features = features_model(cnn)
    val, test = blob_images(200, seed=21), blob_images(400, seed=22)
    rng = np.random.default_rng(3)
    shape = test.pixels.shape[1:3]
    smooth = np.clip(np.cumsum(np.cumsum(rng.normal(0, 3, (50, *shape)), 1), 2) + 128, 0, 255).astype(np.uint8)
    unseen = {"noise": rng.integers(0, 256, (100, *shape, 3), dtype=np.uint8), "inverted": 255 - test.pixels[:100],
              "smooth": np.repeat(smooth[..., None], 3, -1), "grey": np.full((10, *shape, 3), 100, np.uint8)}
    f = {name: features.predict(x.astype(np.float32), verbose=0) for name, x in
         {"val": val.pixels, "test": test.pixels, **unseen}.items()}
    fit = fit_mahalanobis(f["val"], val.labels, tpr=0.95)
    return fit, f, test, trust_model(cnn, fit)


def test_real_model_flags_unseen_inputs_and_keeps_the_fitted_rate_on_held_out_scans(blob_ood):
    """Held-out in-distribution scans: false alarms near the stated 5 % (measured, within a binomial margin);
    every scan of a kind it never saw is flagged."""
    fit, f, _, _ = blob_ood
    assert fit.measured_tpr >= 0.95
    false_alarms = float(np.mean(fit.flags(f["test"])))
    assert false_alarms <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400), false_alarms
    for name in ("noise", "inverted", "smooth", "grey"):
        assert np.mean(fit.flags(f[name])) == 1.0, name


def test_in_graph_projection_gives_the_same_scores_as_numpy(blob_ood, tmp_path):
    """The exported model's third output ("ood_features") is the fitted projection: scores from it equal the
    numpy scores; the saved parameters load back identically."""
    fit, f, test, model = blob_ood
    scores, cam, z = model.predict(test.pixels[:32].astype(np.float32), verbose=0)
    assert z.shape == (32, fit.dims) and cam.ndim == 4
    np.testing.assert_allclose(score_projected(z, fit.centres), fit.score(f["test"][:32]), rtol=1e-3, atol=1e-2)
    again = MahalanobisOod.load(fit.save(tmp_path / "ood.npz"))
    np.testing.assert_array_equal(again.projection, fit.projection)
    assert again.threshold == fit.threshold and again.summary()["centres"] == fit.summary()["centres"]


def test_energy_of_logits_is_measured_not_assumed(blob_ood):
    """Why Mahalanobis is the default: this records the energy score's behaviour on the same model. If a
    future model made energy separate these sets, this test says so (and the default can be revisited)."""
    import keras

    from tests.trust_models import blob_cnn
    from tumor_edge.modelside.cam import trust_model

    fit, f, test, _ = blob_ood
    with_maps = trust_model(blob_cnn()[0])  # each map's spatial mean is its class logit
    logits = keras.Model(with_maps.inputs, keras.layers.GlobalAveragePooling2D()(with_maps.outputs[1]))
    noise = np.random.default_rng(3).integers(0, 256, (100, *test.pixels.shape[1:]), dtype=np.uint8)
    energies = {name: output_score(logits.predict(x.astype(np.float32), verbose=0), "logit_energy")
                for name, x in (("test", test.pixels), ("noise", noise))}
    threshold = fit_output_threshold(energies["test"], "logit_energy", tpr=0.95)["threshold"]
    noise_flagged = float(np.mean(energies["noise"] > threshold))
    assert noise_flagged < 0.5, f"energy now flags {noise_flagged:.0%} of noise: revisit the default score"


def _primal_parts(features: np.ndarray, labels: np.ndarray, dims: int):
    """The textbook fit: eigen-decompose the C x C within-class covariance itself."""
    from tumor_edge.calibration.mahalanobis import EIGEN_FLOOR

    classes = np.unique(labels)
    means = {c: features[labels == c].mean(axis=0) for c in classes}
    within = features - np.stack([means[c] for c in labels])
    eigval, eigvec = np.linalg.eigh(within.T @ within / (len(features) - len(classes)))
    order = np.argsort(eigval)[::-1][:min(dims, len(features) - len(classes))]
    projection = eigvec[:, order] / np.sqrt(np.maximum(eigval[order], eigval.max() * EIGEN_FLOOR))
    centres = np.stack([(means[c] - features.mean(axis=0)) @ projection for c in classes])
    return features.mean(axis=0), projection, centres


@pytest.mark.parametrize("n, width", [(60, 300), (400, 50)])
def test_the_fit_scores_as_the_covariances_own_eigenvectors_would(n, width):
    """Fewer scans than features (a validation split's 2048 pooled features) or more: the scores, the threshold
    and every scan's distance equal the textbook fit's. Eigenvector signs may differ; distances do not see them."""
    from tumor_edge.calibration.mahalanobis import _fit_parts, out_of_fold_scores

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, n)
    features = rng.normal(size=(n, width)) * rng.uniform(0.1, 3, width) + labels[:, None] * 0.5
    probe = rng.normal(size=(50, width)) * 2
    mean, projection, centres = _fit_parts(features, labels, 32)
    ref_mean, ref_projection, ref_centres = _primal_parts(features, labels, 32)
    ours = score_projected((probe - mean) @ projection, centres)
    textbook = score_projected((probe - ref_mean) @ ref_projection, ref_centres)
    np.testing.assert_allclose(ours, textbook, rtol=1e-9)
    assert np.abs(projection).sum(axis=0) == pytest.approx(np.abs(ref_projection).sum(axis=0), rel=1e-9)
    held_out = out_of_fold_scores(features, labels, 32)
    assert np.all(np.isfinite(held_out)) and held_out.shape == (n,)
