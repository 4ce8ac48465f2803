"""Which reference images the bundle records: those that drive the int8 file's activations highest in their
calibrated ranges.

`tumor-edge verify` reruns a bundle's files on generated reference images (tumor_edge.runtime.reference: any
machine regenerates them from a generator name and a seed, and no patient image enters a bundle). A device whose
int8 kernels saturate (x86 without VNNI adds two u8 x s8 products into an int16) goes wrong only where activations
sit near the top of their calibrated range, so reference images that never get there cannot show it. Export
therefore measures, for a few seeds, how far each seed's images push every quantized activation of the int8 file
(the largest uint8 code reached, as a fraction of the codes above the zero point) and records the seed whose
images reach highest (median over the activations, then the lowest activation), with what it reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.export.quantize.calibration import scaled_batches
from tumor_edge.export.quantize.scoring import session
from tumor_edge.runtime import Preprocessing, brain_blobs

SEEDS_TRIED = 8
BATCH = 4


@dataclass
class ReferenceChoice:
    """The seed whose reference images reach highest in the int8 file's activation ranges."""

    seed: int
    count: int
    median: float  # over the quantized activations: the largest code reached / the codes above the zero point
    lowest: float
    activations: int
    seeds: dict[int, float] = field(default_factory=dict)  # every seed tried -> its median

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "count": self.count, "median_top_code": round(self.median, 4),
                "lowest_top_code": round(self.lowest, 4), "activations": self.activations,
                "seeds_tried": {str(k): round(v, 4) for k, v in self.seeds.items()},
                "why": "the seed whose images drive the int8 activations highest in their calibrated ranges, where "
                       "a device's saturating int8 kernels go wrong"}


def activation_codes(model, pixels: np.ndarray, spec: Preprocessing) -> dict[str, tuple[int, int]]:
    """{activation: (largest uint8 code reached on `pixels`, zero point)} for every QuantizeLinear of a QDQ
    model whose input is computed (not a weight)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]
    zero_points = {n.output[0]: int(np.asarray(constants.get(n.input[2], 0) if len(n.input) > 2 else 0).ravel()[0])
                   for n in quantizers}
    outputs = {o.name for o in model.graph.output}
    for n in quantizers:
        if n.output[0] not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
    sess = session(model)
    names = [n.output[0] for n in quantizers]
    top = dict.fromkeys(names, 0)
    input_name = sess.get_inputs()[0].name
    for batch in scaled_batches(pixels, spec, BATCH):
        for name, value in zip(names, sess.run(names, {input_name: batch})):
            top[name] = max(top[name], int(np.max(value)) if value.size else 0)
    return {name: (top[name], zero_points[name]) for name in names}


def top_code_fractions(codes: dict[str, tuple[int, int]]) -> np.ndarray:
    """Per activation, how far up its uint8 range above the zero point the images reached (0..1)."""
    return np.array([(code - zero) / (255 - zero) if zero < 255 else 1.0 for code, zero in codes.values()])


def choose_reference_seed(int8_model, spec: Preprocessing, first_seed: int, count: int,
                          seeds: Sequence[int] | None = None) -> ReferenceChoice:
    """Measure each seed's reference images on the int8 file; keep the one that reaches highest (ties: the
    earlier seed)."""
    seeds = list(seeds) if seeds is not None else [first_seed + i for i in range(SEEDS_TRIED)]
    best: ReferenceChoice | None = None
    tried: dict[int, float] = {}
    for seed in seeds:
        fractions = top_code_fractions(activation_codes(int8_model, brain_blobs(seed, count, spec.height,
                                                                                spec.width), spec))
        if not fractions.size:
            return ReferenceChoice(first_seed, count, 0.0, 0.0, 0, {})
        median, lowest = float(np.median(fractions)), float(fractions.min())
        tried[seed] = median
        if best is None or (median, lowest) > (best.median, best.lowest):
            best = ReferenceChoice(seed, count, median, lowest, len(fractions))
    best.seeds = tried
    return best
