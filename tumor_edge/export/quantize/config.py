"""How the ONNX int8 file is made (`QuantizationConfig`), the goal it must reach against fp32 (`ParityGoal`), and
the CPU-dependent parts of the recipe.

The recipe (measured in benchmarks/quant_speed.py, results in benchmarks/results/quant-*.md): QDQ format, uint8
activations (int8 activations ran 2-3x slower: onnxruntime's x86 kernels are u8 x s8), int8 per-channel weights,
the classifier head in float, average pools as int8 depthwise convolutions. On an AVX-512 VNNI Xeon (299 px
InceptionV3, load ~6, quant-2026-11-27-0833.md) that runs at 0.58-0.67x LiteRT int8's latency and 0.22-0.33x
onnxruntime fp32's, at batch 1 and 8, 1 and 2 threads; QDQ average pools were 1.0x LiteRT, float pools 0.64-0.89x.
Per-tensor weights were as fast or faster in 3 of 4 configurations but keep less accuracy: per-channel stays.
`reduce_range` (7-bit weights) is only for x86 CPUs without VNNI/AMX: there `vpmaddubsw` adds two u8*s8 products into a
saturating int16, and 7-bit weights keep that sum from overflowing; with VNNI (`vpdpbusd`, 32-bit accumulate),
AMX or ARM dot products the full 8-bit range is exact, as accurate and as fast, so it is the default there.
"""

from __future__ import annotations

from dataclasses import dataclass

from tumor_edge.errors import ConfigError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
AVERAGE_POOLS = ("depthwise", "float", "int8")

# Instruction sets with int8 dot products that accumulate in 32 bits: no int16 saturation, no need for 7 bits.
EXACT_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


def default_reduce_range(flags: set[str] | None = None) -> bool:
    """7-bit weights only where int8 products saturate: x86 without VNNI/AMX (AVX2 or older).

    An export machine that cannot tell (no /proc/cpuinfo: macOS, Windows) keeps the full range: its CPU is
    almost certainly ARM with dot products or a recent x86 with VNNI.
    """
    from tumor_edge.machine import cpu_flag_set

    flags = cpu_flag_set() if flags is None else flags
    if not flags:
        return False
    is_x86 = "sse2" in flags or "avx2" in flags or "sse4_2" in flags
    return is_x86 and not (flags & EXACT_INT8_DOT_FLAGS)


@dataclass(frozen=True)
class ParityGoal:
    """What int8 must keep against the fp32 ONNX model on the validation images (issue 13's goal)."""

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
    reduce_range: bool | None = None  # None: decided by this CPU (default_reduce_range)
    activations: str = "uint8"  # "uint8" (onnxruntime's x86 int8 kernels are u8 x s8) or "int8"
    keep_head_float: bool = True
    # How average pools run: "depthwise" (int8 depthwise conv, graph.depthwise_average_pools: fastest),
    # "float" (graph.float_average_pools), "int8" (onnxruntime's QLinearAveragePool: slowest).
    average_pools: str = "depthwise"
    batch_size: int = 4  # calibration batch: every tensor is a graph output, ~270 MB an image at 299 px
    percentile: float = 99.999
    seed: int = 0
    # Accuracy-aware fallback: keep the most sensitive nodes in float until `goal` holds on validation.
    accuracy_aware: bool = True
    goal: ParityGoal = ParityGoal()
    max_probes: int = 24  # sensitivity measurements (one int8 model each) per stage: blocks, then nodes
    probe_images: int = 48  # validation images a probe runs on: the flipped and most shifted first
    max_float_mac_fraction: float = 0.3  # float fallback stops here: int8 must stay >= ~1.8x faster than fp32
    # Schedule steps in a row that may leave the goal's shortfall where it was before the search gives up and
    # ships the candidate nearest the goal (fewest float nodes). On the CPU demo's 96 px model the goal was one
    # validation image out of reach from 1 to 24 float nodes, and the search used to ship the 24.
    stall_steps: int = 3

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in CALIBRATION_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"calibration methods must be among {', '.join(CALIBRATION_METHODS)}, "
                              f"not {', '.join(unknown) or 'none'}")
        if self.average_pools not in AVERAGE_POOLS:
            raise ConfigError(f"average_pools must be one of {', '.join(AVERAGE_POOLS)}, not {self.average_pools!r}")
        if self.activations not in ("uint8", "int8"):
            raise ConfigError(f"activations must be uint8 or int8, not {self.activations!r}")
        if min(self.max_probes, self.probe_images, self.batch_size, self.stall_steps) < 1:
            raise ConfigError("max_probes, probe_images, batch_size and stall_steps must be at least 1")

    def resolved_reduce_range(self) -> bool:
        return default_reduce_range() if self.reduce_range is None else bool(self.reduce_range)
