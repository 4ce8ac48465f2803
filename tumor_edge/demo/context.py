"""What one demo run is: its profile, the user's options, and what the stages have produced so far (plain data
the pipeline and the summary share)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.errors import TumorEdgeError


@dataclass(frozen=True)
class DemoProfile:
    """Sizes chosen for the hardware."""

    name: str
    per_class: int  # demo images per class (Training + Testing)
    data_size: int  # demo image edge, px
    image_size: int  # model input, px
    epochs: int
    batch_size: int
    bn_momentum: float
    learning_rate: float
    bench_seconds: float
    augment: bool = False  # the demo data already varies rotation, scale, shift, flips and contrast per image
    patience: int = 3  # epochs without a better val accuracy before stopping; the LR drops after half of it
    lr_schedule: str = "plateau"  # train's --lr-schedule

    def describe(self) -> str:
        return (f"profile {self.name}: {self.per_class} images/class, InceptionV3 from scratch at "
                f"{self.image_size} px, {self.epochs} epochs, batch {self.batch_size}")


# name -> profile (`auto` picks "gpu" when the NVIDIA driver lists a GPU). The cpu profile fits in a few minutes on
# two cores without AVX-512: batch 32 (fewer, fuller steps), six epochs and a cosine rate that ends settled, which
# is held-out accuracy a plateau schedule needed ten epochs for (benchmarks/results/demo-profile-*.md).
PROFILES: dict[str, DemoProfile] = {
    "cpu": DemoProfile("cpu", per_class=500, data_size=128, image_size=96, epochs=6, batch_size=32,
                       bn_momentum=0.9, learning_rate=2e-3, bench_seconds=1.0, patience=6, lr_schedule="cosine"),
    "gpu": DemoProfile("gpu", per_class=1000, data_size=256, image_size=224, epochs=20, batch_size=32,
                       bn_momentum=0.95, learning_rate=1e-3, bench_seconds=2.0),
}


@dataclass
class DemoConfig:
    workdir: Path = Path("demo-workdir")
    profile: str = "auto"
    seed: int = 0
    force: bool = False  # rerun every stage, even complete ones
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.profile != "auto" and self.profile not in PROFILES:
            raise TumorEdgeError(f"unknown demo profile {self.profile!r}; choose auto, {', '.join(PROFILES)}")


@dataclass
class DemoContext:
    config: DemoConfig
    profile: DemoProfile
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def bundle(self) -> Path:
        return self.workdir / "bundle"
