"""On-the-fly augmentation: Keras layers in the training graph, not in the saved classifier, in float32 whatever
the precision policy (resampling in float16 loses pixel levels)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes as Keras' layers take them; 0 (or False) disables one transform."""

    rotation: float = 0.04  # fraction of a full turn: 0.04 ~ +-14 degrees
    shift: float = 0.08  # fraction of height/width
    flip: bool = True  # horizontal only: left/right hemispheres are symmetric enough; up/down is not anatomy
    zoom: float = 0.1
    contrast: float = 0.1
    enabled: bool = True


def build_augmenter(config: AugmentConfig, seed: int):
    """A Sequential of the enabled transforms, or None when nothing is enabled."""
    import keras

    if not config.enabled:
        return None
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32"))
    if config.rotation > 0:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="constant", seed=seed + 1,
                                                  dtype="float32"))
    if config.shift > 0:
        layers.append(keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="constant",
                                                     seed=seed + 2, dtype="float32"))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="constant", seed=seed + 3, dtype="float32"))
    if config.contrast > 0:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 4,
                                                    dtype="float32"))
    return keras.Sequential(layers, name="augmentation") if layers else None
