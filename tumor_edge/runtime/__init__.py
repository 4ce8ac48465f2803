"""Device side: decode, preprocess and classify with onnxruntime (or LiteRT). Never imports TensorFlow."""

from tumor_edge.runtime.backends import BackendOptions, open_backend
from tumor_edge.runtime.bundle import BundleMetadata
from tumor_edge.runtime.classifier import Classifier, Prediction
from tumor_edge.runtime.preprocess import Preprocessing

__all__ = ["BackendOptions", "BundleMetadata", "Classifier", "Prediction", "Preprocessing", "open_backend"]
