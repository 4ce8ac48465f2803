"""ONNX static int8 (QDQ) that loses nothing: calibration method chosen on validation, then accuracy-aware float
fallback for the most sensitive nodes; plus the TFLite int8 counterpart (tumor_edge.export.tflite_export).

Modules, one job each: config (recipe, goal, weight ranges), calibration (one-pass ranges for all
methods), graph (float-by-construction rewrites, QDQ removal), scoring (int8 vs fp32 on validation, and the
reference images), sensitivity (the fallback search), onnx_int8 (the entry point).
"""

from tumor_edge.export.quantize.calibration import collect_ranges, entropy_threshold
from tumor_edge.export.quantize.config import CALIBRATION_METHODS, WEIGHT_RANGES, ParityGoal, QuantizationConfig
from tumor_edge.export.quantize.graph import float_average_pools, head_nodes, keep_float, quantized_nodes
from tumor_edge.export.quantize.onnx_int8 import QuantizationReport, quantize_onnx_int8, quantize_with_ranges
from tumor_edge.export.quantize.scoring import CandidateScore

__all__ = ["CALIBRATION_METHODS", "WEIGHT_RANGES", "CandidateScore", "ParityGoal", "QuantizationConfig",
           "QuantizationReport", "collect_ranges", "entropy_threshold", "float_average_pools", "head_nodes",
           "keep_float", "quantize_onnx_int8", "quantize_with_ranges", "quantized_nodes"]
