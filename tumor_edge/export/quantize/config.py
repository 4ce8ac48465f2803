"""How the ONNX int8 file is made (`QuantizationConfig`), the goal it must reach against fp32 (`ParityGoal`), and
the weight ranges it chooses among (`WEIGHT_RANGES`).

The recipe: QDQ format, uint8 activations (onnxruntime's x86 int8 kernels are u8 x s8), int8 per-channel weights
(more accurate than per-tensor at the same speed), the classifier head in float, average pools as int8 depthwise
convolutions.

The weight range is chosen by measurement on the validation images, never by the CPU that exports: the bundle
runs on other CPUs. Full 8-bit weights are the most precise, but on x86 without VNNI `vpmaddubsw` adds two u8 x s8
products into a saturating int16, which they can overflow (2 x 255 x 127 > 32767); 7-bit weights
(`reduce_range`) and u8 x u8 (uint8 weights) are onnxruntime's two ways around it. A device's own saturation is
what `tumor-edge verify` there catches on the bundle's reference images.
"""

from __future__ import annotations

from dataclasses import dataclass

from tumor_edge.errors import ConfigError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
AVERAGE_POOLS = ("depthwise", "float", "int8")


@dataclass(frozen=True)
class WeightRange:
    """One way to store int8 weights, as onnxruntime's `quantize_static` makes it."""

    name: str
    weight_type: str  # "int8" | "uint8"
    reduce_range: bool  # 7-bit weights
    why: str


WEIGHT_RANGES: dict[str, WeightRange] = {r.name: r for r in (
    WeightRange("s8", "int8", False, "full 8-bit int8 weights: the most precise; exact where products accumulate "
                                     "in 32 bits, may saturate in AVX2's 16-bit pair sums"),
    WeightRange("s8-7bit", "int8", True, "7-bit int8 weights: no pair sum reaches int16's limit on any x86, one bit "
                                         "less precise"),
    WeightRange("u8", "uint8", False, "uint8 weights (u8 x u8 kernels): onnxruntime's other route around AVX2's "
                                      "16-bit pair sums"),
)}
NO_VALIDATION_RANGE = "s8-7bit"  # nothing to measure on: the range that saturates on no CPU


@dataclass(frozen=True)
class ParityGoal:
    """What int8 must keep against the fp32 ONNX model on the validation images."""

    min_agreement: float = 0.995  # top-1 agreement with fp32
    max_accuracy_drop: float = 0.003  # 0.3 points
    max_auc_drop: float = 0.002  # macro one-vs-rest AUC

    def failures(self, agreement: float | None, accuracy_drop: float, auc_drop: float) -> list[str]:
        """Human-readable reasons the goal is missed (empty: it holds)."""
        out = []
        if agreement is not None and agreement < self.min_agreement:
            out.append(f"agreement {agreement:.2%} < {self.min_agreement:.2%}")
        if accuracy_drop > self.max_accuracy_drop + 1e-12:
            out.append(f"accuracy -{accuracy_drop * 100:.2f} points > {self.max_accuracy_drop * 100:.2f}")
        if auc_drop > self.max_auc_drop + 1e-12:
            out.append(f"macro AUC -{auc_drop:.4f} > {self.max_auc_drop:.4f}")
        return out


@dataclass
class QuantizationConfig:
    """How the ONNX int8 file is made; recorded in the bundle's metadata."""

    methods: tuple[str, ...] = CALIBRATION_METHODS
    per_channel: bool = True
    reduce_range: bool | None = None  # None: chosen among weight_ranges by measurement; True 7-bit, False 8-bit
    weight_ranges: tuple[str, ...] = tuple(WEIGHT_RANGES)  # the candidates when reduce_range is None
    activations: str = "uint8"  # "uint8" (onnxruntime's x86 int8 kernels are u8 x s8) or "int8"
    keep_head_float: bool = True
    average_pools: str = "depthwise"  # graph.depthwise_average_pools (fastest), float_average_pools, or "int8"
    batch_size: int = 4  # calibration batch: every tensor is a graph output, so memory grows fast with it
    percentile: float = 99.999
    seed: int = 0
    # Accuracy-aware fallback: keep the most sensitive nodes in float until `goal` holds on validation.
    accuracy_aware: bool = True
    goal: ParityGoal = ParityGoal()
    max_probes: int = 24  # sensitivity measurements (one int8 model each) per stage: blocks, then nodes
    probe_images: int = 48  # validation images a probe runs on: the flipped and most shifted first
    max_float_mac_fraction: float = 0.3  # float fallback stops here: int8 must stay clearly faster than fp32
    # Steps in a row that may bring the goal no closer before the search ships the candidate nearest it: float
    # nodes that do not help only cost int8 speed.
    stall_steps: int = 3

    def __post_init__(self) -> None:
        for what, given, allowed in (("calibration methods", self.methods, CALIBRATION_METHODS),
                                     ("weight ranges", self.weight_ranges, tuple(WEIGHT_RANGES))):
            unknown = [v for v in given if v not in allowed]
            if unknown or not given:
                raise ConfigError(f"{what} must be among {', '.join(allowed)}, not {', '.join(unknown) or 'none'}")
        if self.average_pools not in AVERAGE_POOLS:
            raise ConfigError(f"average_pools must be one of {', '.join(AVERAGE_POOLS)}, not {self.average_pools!r}")
        if self.activations not in ("uint8", "int8"):
            raise ConfigError(f"activations must be uint8 or int8, not {self.activations!r}")
        if min(self.max_probes, self.probe_images, self.batch_size, self.stall_steps) < 1:
            raise ConfigError("max_probes, probe_images, batch_size and stall_steps must be at least 1")

    def range_candidates(self) -> tuple[str, ...]:
        """The weight ranges export measures: the one asked for, else every candidate (the first is the
        calibration methods' common ground)."""
        if self.reduce_range is not None:
            return ("s8-7bit",) if self.reduce_range else ("s8",)
        return self.weight_ranges
