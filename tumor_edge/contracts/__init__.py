"""The contracts between the parts: the model bundle, the training run folder, the format table and the
preprocessing spec.

Train writes a run folder, export reads it and writes a bundle, the runtime, bench and serve read bundles. Each
of those file layouts is defined once, here, and every part imports it from here, so a field or a file name
cannot drift between the writer and the reader. Nothing in this package imports TensorFlow, onnxruntime or any
other part of tumor_edge (except `errors`): the device install carries it.
"""
