"""TensorFlow side: model, augmentation, fitting and evaluation. Imported only by `train`/`evaluate`/`export`."""
