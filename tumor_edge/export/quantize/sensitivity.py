"""Accuracy-aware int8: measure which quantized nodes the predictions are sensitive to, and hand the most
sensitive back to float until the int8 model meets the parity goal against fp32 on the validation images.

Why this search and not a per-tensor error metric: what matters is the decision, and a node's local
quantization error says little about how much the softmax moves (a noisy early conv may wash out, a slightly
clipped late one may flip a near-tie). So every measurement runs the real int8 model through onnxruntime:

1. Probe ("all but one"): keep one unit in float, everything else int8, and score it on the focus images (the
   ones naive int8 flipped, then the ones whose probabilities moved most). Units are single nodes when the
   model has at most `max_probes` quantized nodes, else contiguous blocks of nodes in graph order first, then
   the nodes of the most sensitive blocks one by one. Every variant is a graph rewrite of the one QDQ model
   (`graph.keep_float`), never a re-quantization, so a probe costs one session and a few dozen images.
2. Greedy fallback: keep the 1, 2, 3, 4, 6, 8, 12, ... most sensitive nodes in float, scoring each on the whole
   validation split, until the goal holds, then bisect back to the fewest that still meet it. int8 must stay
   fast, so the search stops where the float nodes would carry more than `max_float_mac_fraction` of the int8
   MACs (a larger float share leaves int8 little faster than fp32); it then ships the most sensitive nodes it
   could afford in float and says the goal was NOT met (the parity gate decides).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tumor_edge.export.quantize.config import QuantizationConfig
from tumor_edge.export.quantize.graph import int8_nodes, keep_float, node_macs, quantized_nodes
from tumor_edge.export.quantize.scoring import CandidateScore, probabilities, score
from tumor_edge.runtime import Preprocessing

EVAL_BATCH = 16


@dataclass
class Probe:
    """One unit kept float, the rest int8, scored on the focus images."""

    unit: str
    nodes: list[str]
    agreement: float
    max_abs_diff: float
    mean_abs_diff: float

    def key(self) -> tuple[float, float, float]:  # smaller: keeping this unit float helps more
        return (-self.agreement, self.mean_abs_diff, self.max_abs_diff)


@dataclass
class FallbackResult:
    """What stayed float and why; `model` is the int8 model to ship (None when nothing changed)."""

    naive: dict[str, Any]
    final: dict[str, Any] | None = None
    holds: bool = False
    float_nodes: list[dict[str, Any]] = field(default_factory=list)
    also_float: list[dict[str, Any]] = field(default_factory=list)  # int8 kernels lost as a consequence
    float_mac_fraction: float = 0.0  # of the MACs naive int8 ran in int8 kernels, the share now in float
    probes: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    focus_images: int = 0
    stopped: str | None = None  # why the search stopped short of the goal
    model: Any = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("model")
        return data


def focus_indices(probs: np.ndarray, reference: np.ndarray, count: int) -> np.ndarray:
    """The validation images a probe runs on: flipped ones first, then by largest probability shift."""
    shift = np.abs(probs - reference).max(axis=1)
    flipped = probs.argmax(1) != reference.argmax(1)
    order = np.lexsort((-shift, ~flipped))  # flipped first, then larger shift first
    return np.sort(order[:count])


def fallback_schedule(n: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... n: about 2 log2(n) steps from one node to all of them."""
    sizes, p = [1, 2, 3], 4
    while p < n:
        sizes += [p, p + p // 2]
        p *= 2
    return sorted({s for s in sizes if s < n} | {n})


@dataclass
class NearestStep:
    """The fallback step nearest the goal so far (the first of equals: fewest float ops; 0 is the naive model)
    and how many steps in a row since came no nearer: a search that misses its goal ships `k` and stops after
    its `stall_steps` of those. Shared by the ONNX and the TFLite search."""

    shortfall: float
    k: int = 0
    stalled: int = 0

    def offer(self, k: int, shortfall: float) -> bool:
        """Record step k's shortfall; True when it came nearer than every step before it."""
        if shortfall < self.shortfall:
            self.shortfall, self.k, self.stalled = shortfall, k, 0
            return True
        self.stalled += 1
        return False


class _Search:
    def __init__(self, qdq, fp32, pixels: np.ndarray, reference: np.ndarray, spec: Preprocessing, n_classes: int):
        self.qdq, self.fp32, self.pixels = qdq, fp32, pixels
        self.reference, self.spec, self.n_classes = reference, spec, n_classes

    def run(self, nodes: list[str], index: np.ndarray | None = None) -> np.ndarray:
        model = keep_float(self.qdq, self.fp32, nodes) if nodes else self.qdq
        pixels = self.pixels if index is None else self.pixels[index]
        return probabilities(model, pixels, self.spec, EVAL_BATCH)

    def probe(self, unit: str, nodes: list[str], focus: np.ndarray) -> Probe:
        s = score(unit, self.run(nodes, focus), self.reference[focus], None, self.n_classes)
        return Probe(unit, nodes, s.agreement, s.max_abs_diff, s.mean_abs_diff)


def rank_units(search: _Search, candidates: list[str], focus: np.ndarray, max_probes: int,
               ) -> tuple[list[str], list[Probe], dict[str, str]]:
    """Nodes ordered most sensitive first, the probes that ordered them, and each node's block label."""
    block_of: dict[str, str] = {}
    if len(candidates) <= max_probes:
        probes = [search.probe(n, [n], focus) for n in candidates]
        return [p.nodes[0] for p in sorted(probes, key=Probe.key)], probes, block_of
    blocks = [list(b) for b in np.array_split(np.array(candidates, dtype=object), max_probes) if len(b)]
    block_probes = []
    for i, block in enumerate(blocks):
        label = f"block {i + 1}/{len(blocks)} ({block[0]} .. {block[-1]}, {len(block)} nodes)"
        block_probes.append(search.probe(label, block, focus))
        block_of.update({n: label for n in block})
    ranked_blocks = sorted(block_probes, key=Probe.key)
    most_sensitive = [n for block in ranked_blocks for n in block.nodes][:max_probes]  # then these one by one
    node_probes = [search.probe(n, [n], focus) for n in most_sensitive]
    order = [p.nodes[0] for p in sorted(node_probes, key=Probe.key)]
    seen = set(order)
    for block in ranked_blocks:  # the rest: by block sensitivity, graph order inside a block
        order += [n for n in block.nodes if n not in seen]
    return order, block_probes + node_probes, block_of


def accuracy_aware_fallback(qdq, fp32, pixels: np.ndarray, labels: np.ndarray | None, reference: np.ndarray,
                            naive_probs: np.ndarray, spec: Preprocessing, n_classes: int,
                            config: QuantizationConfig) -> FallbackResult:
    """Keep the fewest, most sensitive nodes of `qdq` (a QDQ ModelProto made from the ModelProto `fp32`) in
    float until `config.goal` holds on the validation images; see the module docstring."""
    ref_score = score("fp32", reference, reference, labels, n_classes)
    naive = score("int8", naive_probs, reference, labels, n_classes)
    result = FallbackResult(naive=asdict(naive))
    if not naive.failures(ref_score, config.goal):
        result.holds, result.final = True, asdict(naive)
        return result
    search = _Search(qdq, fp32, pixels, reference, spec, n_classes)
    focus = focus_indices(naive_probs, reference, config.probe_images)
    result.focus_images = int(len(focus))
    order, probes, block_of = rank_units(search, quantized_nodes(qdq), focus, config.max_probes)
    result.probes = [asdict(p) | {"nodes": len(p.nodes)} for p in probes]
    by_unit = {p.unit: p for p in probes}

    macs = node_macs(fp32)
    before = int8_nodes(qdq)
    total = sum(macs.get(n, 0) for n in before) or 1

    def affordable(k: int) -> bool:  # int8 must stay fast: cap the share of its MACs handed back to float
        return sum(macs.get(n, 0) for n in order[:k]) / total <= config.max_float_mac_fraction

    scores: dict[int, CandidateScore] = {0: naive}

    def holds(k: int) -> bool:
        s = scores[k] = score(f"{k} float", search.run(order[:k]), reference, labels, n_classes)
        fails = s.failures(ref_score, config.goal)
        result.steps.append({"float_nodes": k, "agreement": s.agreement, "accuracy": s.accuracy,
                             "macro_auc": s.macro_auc, "max_abs_diff": round(s.max_abs_diff or 0.0, 5),
                             "mean_abs_diff": round(s.mean_abs_diff or 0.0, 6), "goal_missed": fails})
        return not fails

    previous, found = 0, None
    nearest = NearestStep(naive.shortfall(ref_score, config.goal))
    for k in fallback_schedule(len(order)):
        if not affordable(k):
            result.stopped = (f"the goal needs more than {config.max_float_mac_fraction:.0%} of the int8 MACs in "
                              f"float (int8 would lose its speed); {_shipping(nearest.k)}, the goal NOT met")
            break
        if holds(k):
            found = k
            break
        previous = k
        if not nearest.offer(k, scores[k].shortfall(ref_score, config.goal)) and nearest.stalled >= config.stall_steps:
            result.stopped = (f"{nearest.stalled} steps in a row brought the goal no closer (up to {k} float nodes); "
                              f"{_shipping(nearest.k)}, the goal NOT met")
            break
    if found is not None:  # bisect between the last failing and the first passing step: fewest nodes float
        low, high = previous, found
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if holds(middle) else (middle, high)
        found = high
    k = found if found is not None else nearest.k  # none met the goal: the nearest, fewest float
    chosen, final = order[:k], scores[k]
    result.final, result.holds = asdict(final), found is not None
    result.model = keep_float(qdq, fp32, chosen) if chosen else None
    lost = before - int8_nodes(result.model) if chosen else set()
    result.float_mac_fraction = round(sum(macs.get(n, 0) for n in lost | set(chosen)) / total, 4)
    op_types = {n.name: n.op_type for n in fp32.graph.node}
    naive_focus = float(np.mean(naive_probs[focus].argmax(1) == reference[focus].argmax(1)))
    for rank, node in enumerate(chosen):
        probe = by_unit.get(node) or by_unit.get(block_of.get(node, ""))
        why = (f"sensitivity rank {rank + 1} of {len(order)}: kept float alone, the focus images' agreement "
               f"became {probe.agreement:.1%} (naive int8 {naive_focus:.1%}),"
               f" mean |dp| {probe.mean_abs_diff:.4f}" if probe else f"sensitivity rank {rank + 1} of {len(order)}")
        if probe is not None and probe.unit != node:
            why += f" (measured for its {probe.unit})"
        result.float_nodes.append({"node": node, "op_type": op_types.get(node, "?"),
                                   "mac_share": round(macs.get(node, 0) / total, 4), "why": why})
    for node in sorted(lost - set(chosen)):
        result.also_float.append({"node": node, "op_type": op_types.get(node, "?"),
                                  "mac_share": round(macs.get(node, 0) / total, 4),
                                  "why": "its output now feeds only float nodes, so onnxruntime cannot fuse it "
                                         "into an int8 kernel (it runs in float on dequantized inputs)"})
    return result


def _shipping(k: int) -> str:
    return (f"shipping the {k} most sensitive nodes float (the candidate nearest the goal)" if k
            else "shipping naive int8 (no step came nearer the goal)")
