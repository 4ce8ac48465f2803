"""Running int8 files on images: scoring a candidate against the fp32 ONNX model on the validation images, and
choosing the reference images the bundle records.

Scoring: probabilities through onnxruntime at the runtime's optimisation level ('all', as on a device), top-1
agreement, accuracy, macro AUC and probability shifts, and the lexicographic loss that ranks candidates.

Reference images: `tumor-edge verify` reruns a bundle's files on generated reference images (any machine
regenerates them from a generator name and a seed; no patient image enters a bundle). A device whose int8 kernels
saturate (x86 without VNNI adds two u8 x s8 products into an int16) goes wrong only where activations sit near the
top of their calibrated range, so reference images that never get there cannot show it. Export therefore
measures, for a few seeds, how far each seed's images push every quantized activation of the int8 file (the
largest uint8 code reached, as a fraction of the codes above the zero point) and records the seed whose images
reach highest (median over the activations, then the lowest activation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.export.quantize.calibration import scaled_batches, session
from tumor_edge.export.quantize.config import ParityGoal
from tumor_edge.metrics import one_vs_rest_auc
from tumor_edge.runtime import Preprocessing, brain_blobs

SEEDS_TRIED = 8
BATCH = 4


@dataclass
class CandidateScore:
    """One int8 model against the fp32 ONNX model on the validation images."""

    method: str
    accuracy: float | None = None
    macro_auc: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    seconds: float = 0.0

    def drops(self, reference: CandidateScore) -> tuple[float, float]:
        """(accuracy lost, macro AUC lost) against the fp32 reference; gains count as 0."""
        acc_drop = max(0.0, reference.accuracy - (self.accuracy or 0.0)) if reference.accuracy is not None else 0.0
        auc_drop = max(0.0, reference.macro_auc - (self.macro_auc or 0.0)) if reference.macro_auc is not None else 0.0
        return acc_drop, auc_drop

    def failures(self, reference: CandidateScore, goal: ParityGoal) -> list[str]:
        return goal.failures(self.agreement, *self.drops(reference))

    def shortfall(self, reference: CandidateScore, goal: ParityGoal) -> float:
        """How far from the goal: the sum of what each criterion misses by (0 when it holds). A fallback search
        that does not shrink it is not getting nearer, whatever the finer differences between candidates."""
        acc_drop, auc_drop = self.drops(reference)
        agreement_gap = goal.min_agreement - self.agreement if self.agreement is not None else 0.0
        return round(max(0.0, agreement_gap) + max(0.0, acc_drop - goal.max_accuracy_drop)
                     + max(0.0, auc_drop - goal.max_auc_drop), 9)

    def loss_key(self, reference: CandidateScore) -> tuple[float, ...]:
        """Lexicographic: disagreement with fp32, accuracy lost, AUC lost, mean probability shift.

        Disagreement first: on a validation set of a few hundred images accuracy moves by single images in
        either direction (a flipped prediction can even gain), while agreement counts every decision the
        quantization changed, and a method cannot lose more accuracy than it flips: a method that wins on
        accuracy by one image may flip more decisions than another.
        """
        acc_drop, auc_drop = self.drops(reference)
        return (round(1.0 - (self.agreement or 0.0), 9), round(acc_drop, 9), round(auc_drop, 9),
                self.mean_abs_diff or 0.0)


def probabilities(model, pixels: np.ndarray, spec: Preprocessing, batch_size: int) -> np.ndarray:
    """The model's first output over uint8 pixels scaled as `spec` says, batch by batch."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([np.asarray(sess.run(None, {name: batch})[0], dtype=np.float32)
                           for batch in scaled_batches(pixels, spec, batch_size)])


def score(method: str, probs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
          n_classes: int) -> CandidateScore:
    diff = np.abs(probs - reference)
    result = CandidateScore(method, agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
                            max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    if labels is not None:
        result.accuracy = float(np.mean(probs.argmax(1) == labels))
        _, result.macro_auc = one_vs_rest_auc(labels, probs, n_classes)
    return result


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
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n.output[0]) for n in quantizers
                              if n.output[0] not in outputs)
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


def choose_reference_seed(int8_model, spec: Preprocessing, first_seed: int, count: int) -> ReferenceChoice:
    """Measure the reference images of SEEDS_TRIED seeds from `first_seed` on the int8 file; keep the one that
    reaches highest (ties: the earlier seed)."""
    best: ReferenceChoice | None = None
    tried: dict[int, float] = {}
    for seed in range(first_seed, first_seed + SEEDS_TRIED):
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
