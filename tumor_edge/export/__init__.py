"""TensorFlow side: ONNX (tf2onnx) and TFLite conversion, quantization, parity, and the model bundle."""
