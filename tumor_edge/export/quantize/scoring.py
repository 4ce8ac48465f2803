"""Scoring an int8 candidate against the fp32 ONNX model on the validation images: probabilities through
onnxruntime at the runtime's optimisation level ('all', as on a device), top-1 agreement, accuracy, macro AUC and
probability shifts, and the lexicographic loss that ranks candidates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_edge.export.quantize.calibration import scaled_batches
from tumor_edge.export.quantize.config import ParityGoal
from tumor_edge.runtime import Preprocessing


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
        acc_drop = max(0.0, (reference.accuracy or 0.0) - (self.accuracy or 0.0)) \
            if reference.accuracy is not None else 0.0
        auc_drop = max(0.0, (reference.macro_auc or 0.0) - (self.macro_auc or 0.0)) \
            if reference.macro_auc is not None else 0.0
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


def session(model, threads: int | None = None):
    """An onnxruntime CPU session at level 'all' for a model file, bytes or ModelProto."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def probabilities(model, pixels: np.ndarray, spec: Preprocessing, batch_size: int) -> np.ndarray:
    """The model's first output over uint8 pixels scaled as `spec` says, batch by batch."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    out = [np.asarray(sess.run(None, {name: batch})[0], dtype=np.float32)
           for batch in scaled_batches(pixels, spec, batch_size)]
    return np.concatenate(out)


def score(method: str, probs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
          n_classes: int) -> CandidateScore:
    from tumor_edge.metrics import one_vs_rest_auc

    diff = np.abs(probs - reference)
    result = CandidateScore(method, agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
                            max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    if labels is not None:
        result.accuracy = float(np.mean(probs.argmax(1) == labels))
        _, result.macro_auc = one_vs_rest_auc(labels, probs, n_classes)
    return result
