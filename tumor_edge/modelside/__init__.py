"""Model-side code that training and export both use: what is built from a Keras classifier itself (the class
activation map head, the pooled-features model), never the training loop or the converters.

Its own package so that export, which builds its trust outputs from these, never imports the training side
(pyproject's import contracts: export never imports train, and this package imports neither). TensorFlow and
Keras are imported inside the functions, as everywhere on the TensorFlow side.
"""
