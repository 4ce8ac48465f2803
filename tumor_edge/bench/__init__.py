"""Latency harness behind `tumor-edge bench`: times the runtime, so it needs no TensorFlow."""
