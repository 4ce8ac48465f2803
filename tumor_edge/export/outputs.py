"""Probabilities or logits: what a model outputs, found out or checked, and a softmax for logit models.

Every exported file then yields probabilities by itself (a lone .onnx used by another tool too), and the int8
files quantize the softmax's input rather than saturating probabilities.
"""

from __future__ import annotations

import numpy as np

from tumor_edge.errors import ModelError


def detect_output(model, source) -> tuple[str, str]:
    """("probabilities" | "logits", why): the last layer's activation where Keras tells it, else the outputs.

    Probabilities are rows in [0, 1] summing to 1 on real images (or noise when none are at hand); logits are
    anything else. A softmax layer could be hiding inside a SavedModel, so the empirical test is the fallback.
    """
    import keras

    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax) or activation is keras.activations.softmax:
        return "probabilities", "last layer applies softmax"
    if activation is keras.activations.linear:
        return "logits", "last layer is linear"
    if rows_are_probabilities(probe_outputs(model, source)):
        return "probabilities", "outputs are rows in [0, 1] that sum to 1"
    return "logits", "outputs are not rows of probabilities"


def probe_outputs(model, source) -> np.ndarray:
    """The model's outputs on a few of the source's images (random pixels when it has none)."""
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.runtime import scale

    spec = source.reference_preprocessing
    samples = []
    for group in (source.test, source.calibration):
        if group:
            samples = group.samples[:8]
            break
    pixels = load_pixels(samples, spec, show_progress=False).pixels if samples else np.zeros((0,))
    if len(pixels) == 0:
        pixels = np.random.default_rng(0).integers(0, 256, (4, spec.height, spec.width, 3), dtype=np.uint8)
    return np.asarray(model.predict(scale(pixels, spec), verbose=0), dtype=np.float64)


def rows_are_probabilities(outputs: np.ndarray) -> bool:
    return bool(outputs.size and np.all(outputs >= -1e-6) and np.all(outputs <= 1 + 1e-6)
                and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def settle_output(source, output: str, decided_by: str, stated: bool):
    """Record what the model outputs; a type the user stated is checked against the model's outputs."""
    if stated and source.kind != "run":
        probs = rows_are_probabilities(probe_outputs(source.raw_model, source))
        if output == "probabilities" and not probs:
            raise ModelError("the model was said to output probabilities, but its outputs are not rows of "
                             "probabilities (say logits)", source.path)
        if output == "logits" and probs:
            source.warnings.append("the model was said to output logits, but its outputs look like "
                                   "probabilities: a softmax will be applied on top of them")
    source.source_output = output
    source.output_decided_by = decided_by
    return source


def with_softmax(model):
    """The model with a softmax appended (for logit models)."""
    import keras

    probabilities = keras.layers.Softmax(name="probabilities")(model.outputs[0])
    return keras.Model(model.inputs, probabilities, name=f"{model.name}_softmax")


__all__ = ["detect_output", "probe_outputs", "rows_are_probabilities", "settle_output", "with_softmax"]
