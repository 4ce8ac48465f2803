"""Write a demo dataset in the public Brain Tumor MRI Dataset layout (Training/, Testing/), with DATASET.md.

Testing never shares anatomy with Training: with two or more volumes it comes from a volume Training never saw;
with one, from a slab of slice positions Training never saw. The output is built in a hidden sibling folder and
moved into place at the end, so an interrupted run leaves no half-written dataset behind.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge import __version__
from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.data.dataset import TEST_DIR, TRAIN_DIR
from tumor_edge.demo.anatomy import VolumeSource, builtin_volumes, load_anatomy, user_volume
from tumor_edge.demo.lesions import PAINTERS
from tumor_edge.demo.scan import make_scan, slab_filter, slab_thresholds
from tumor_edge.errors import DatasetError, OutputExistsError
from tumor_edge.progress import progress

DATASET_CARD = "DATASET.md"
MANIFEST = "manifest.csv"
# Lesion masks live beside the class folders, never inside them, so training and `data check` never see them:
# masks/<split>/<class>/<image stem>.png, 255 on the lesion, same size as the image, same orientation.
MASK_DIR = "masks"
MARKER = "tumor-edge synthetic demo data"  # first line of DATASET.md; identifies a folder this tool made
SPLIT_IDS = {TRAIN_DIR: 0, TEST_DIR: 1}


@dataclass(frozen=True)
class DemoDataConfig:
    """What to generate. `per_class` counts Training and Testing together; `size` is the typical canvas edge."""

    out: Path
    per_class: int = 200
    size: int = 256
    seed: int = 0
    volumes: tuple[Path, ...] = ()
    test_fraction: float = 0.25
    test_volume: str | None = None  # name of the held-out volume; default the first (MNI152 when installed)
    builtin: bool = True  # include the packaged volumes (MNI152 from nilearn, Colin27 from mricron-data)
    force: bool = False
    show_progress: bool = True
    classes: tuple[str, ...] = field(default=tuple(PAINTERS))

    def check(self) -> None:
        if self.per_class < 2:
            raise DatasetError(f"--per-class must be at least 2 (one Training, one Testing), got {self.per_class}")
        if not 32 <= self.size <= 2048:
            raise DatasetError(f"--size must be between 32 and 2048 pixels, got {self.size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise DatasetError(f"test fraction must be between 0 and 1, got {self.test_fraction}")
        unknown = [c for c in self.classes if c not in PAINTERS]
        if unknown:
            raise DatasetError(f"unknown class(es) {', '.join(unknown)}; known: {', '.join(PAINTERS)}")

    @property
    def counts(self) -> tuple[int, int]:
        """(Training, Testing) images per class."""
        n_test = min(max(int(round(self.per_class * self.test_fraction)), 1), self.per_class - 1)
        return self.per_class - n_test, n_test


@dataclass(frozen=True)
class Job:
    split: str
    class_name: str
    index: int
    volume: VolumeSource
    slab: str | None  # "train"/"test" when one volume is split by slice position

    @property
    def filename(self) -> str:
        prefix = "Tr" if self.split == TRAIN_DIR else "Te"  # as the public dataset names them: Tr-gl_0001.jpg
        return f"{prefix}-{self.class_name[:2]}_{self.index:04d}.jpg"


@dataclass
class Plan:
    """Which volume each image comes from, and how Testing is kept apart from Training."""

    jobs: list[Job]
    sources: list[VolumeSource]
    train_sources: list[VolumeSource]
    test_source: VolumeSource | None  # None: one volume, split by slab
    thresholds: dict[str, float] | None


def resolve_volumes(config: DemoDataConfig) -> list[VolumeSource]:
    sources = builtin_volumes() if config.builtin else []
    for path in config.volumes:
        if any(Path(path).resolve() == s.path.resolve() for s in sources):
            continue  # a packaged volume passed again
        sources.append(user_volume(Path(path), {s.name for s in sources}))
    if not sources:
        raise DatasetError("no brain volume available: install the train extra (nilearn ships the MNI152 "
                           "template), `apt-get install mricron-data`, or pass --volume FILE.nii.gz")
    return sources


def make_plan(config: DemoDataConfig, sources: list[VolumeSource]) -> Plan:
    n_train, n_test = config.counts
    # Checked whatever the number of volumes: a misspelt name must fail with one volume as with several.
    matches = [s for s in sources if config.test_volume in (s.name, str(s.path))]
    if config.test_volume is not None and not matches:
        raise DatasetError(f"--test-volume {config.test_volume!r} is none of the volumes: "
                           f"{', '.join(s.name for s in sources)}")
    if len(sources) >= 2:
        # By default the first: with the packaged ones, Training gets the real head and Testing the MNI152 brain.
        test_source = sources[0] if config.test_volume is None else matches[0]
        train_sources = [s for s in sources if s is not test_source]
        thresholds = None
    else:
        test_source, train_sources = None, sources
        thresholds = slab_thresholds(load_anatomy(sources[0]), config.test_fraction, seed=config.seed)
    jobs = []
    for class_name in config.classes:
        for i in range(n_train):
            jobs.append(Job(TRAIN_DIR, class_name, i, train_sources[i % len(train_sources)],
                            "train" if thresholds else None))
        for i in range(n_test):
            jobs.append(Job(TEST_DIR, class_name, i, test_source or sources[0], "test" if thresholds else None))
    return Plan(jobs, sources, train_sources, test_source, thresholds)


def _prepare_output(out: Path, force: bool) -> Path:
    """Refuse to write over something without --force; return the hidden staging folder."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError("folder exists and is not empty (use --force to replace the demo data in it)",
                                out)
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():  # left by an interrupted run of this command
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        item.rename(dest)
    staging.rmdir()


def generate(config: DemoDataConfig) -> Plan:
    """Generate the dataset described by `config` into `config.out`; returns the plan it followed."""
    config.check()
    out = Path(config.out)
    sources = resolve_volumes(config)
    for source in sources:  # fail on a bad volume before touching the output
        load_anatomy(source)
    plan = make_plan(config, sources)
    staging = _prepare_output(out, config.force)
    try:
        rows = _render(plan, config, staging)
        _write_manifest(staging / MANIFEST, rows)
        (staging / DATASET_CARD).write_text(dataset_card(config, plan))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return plan


def _render(plan: Plan, config: DemoDataConfig, root: Path) -> list[dict]:
    class_ids = {c: i for i, c in enumerate(config.classes)}
    rows = []
    thresholds = plan.thresholds
    filters = {name: slab_filter(thresholds, name) for name in ("train", "test")} if thresholds is not None else {}
    for job in progress(plan.jobs, "generating demo scans", length=len(plan.jobs), enabled=config.show_progress):
        anat = load_anatomy(job.volume)
        seed = np.random.SeedSequence(config.seed, spawn_key=(SPLIT_IDS[job.split], class_ids[job.class_name],
                                                               job.index))
        scan = make_scan(anat, job.class_name, config.size, seed, filters.get(job.slab))
        folder = root / job.split / job.class_name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / job.filename).write_bytes(scan.realism.encode(scan.grey))
        rows.append({"split": job.split, "class": job.class_name,
                     "file": f"{job.split}/{job.class_name}/{job.filename}", "volume": job.volume.name,
                     **scan.describe(anat), **_write_mask(root, job, scan.lesion_mask)})
    return rows


def _write_mask(root: Path, job: Job, mask: np.ndarray | None) -> dict[str, object]:
    """Write the lesion mask PNG of one image (none for an image without a lesion); its manifest fields."""
    if mask is None:
        return {"lesion_mask": "", "lesion_pixels": 0}
    relative = f"{MASK_DIR}/{job.split}/{job.class_name}/{Path(job.filename).stem}.png"
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, format="PNG")
    return {"lesion_mask": relative, "lesion_pixels": int(mask.sum())}


def lesion_mask(root: Path, image: str | Path) -> np.ndarray | None:
    """The recorded lesion of a demo image (bool (H, W) in its own pixels), or None without one. `image` is a path
    as `discover` gives it or one relative to `root`, as the manifest records it."""
    image = Path(image)
    try:
        relative = image.resolve().relative_to(Path(root).resolve())
    except ValueError:
        if image.is_absolute():
            return None
        relative = image
    if len(relative.parts) != 3:
        return None
    path = Path(root) / MASK_DIR / relative.parts[0] / relative.parts[1] / f"{relative.stem}.png"
    if not path.is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:  # every row's columns, in order of first appearance
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)


def dataset_card(config: DemoDataConfig, plan: Plan) -> str:
    n_train, n_test = config.counts
    volumes = "\n".join(
        f"- `{s.name}`: {s.description}; `{s.path}` (sha256 `{sha256_file(s.path)[:16]}…`)"
        + (" — **Testing only**" if s is plan.test_source else "") for s in plan.sources)
    if plan.test_source is not None:
        held_out = (f"Testing comes only from `{plan.test_source.name}`, a volume Training never saw; Training "
                    f"comes from {', '.join(f'`{s.name}`' for s in plan.train_sources)}.")
    else:
        assert plan.thresholds is not None
        limits = ", ".join(f"{p} {'|offset|' if p == 'sagittal' else 'offset'} >= {t:.1f} mm"
                           for p, t in plan.thresholds.items())
        held_out = ("Only one volume was available, so Testing comes from a slab of slice positions that "
                    f"Training never saw (slice offset from the sella along the plane normal: {limits}). "
                    "Training and Testing still share one brain: expect optimistic test figures.")
    args = f"--per-class {config.per_class} --size {config.size} --seed {config.seed}"
    args += "".join(f" --volume {p}" for p in config.volumes)
    if config.test_volume:
        args += f" --test-volume {config.test_volume}"
    if not config.builtin:
        args += " --no-builtin"
    return f"""# {MARKER}

**Synthetic data. Not patient data, not a diagnostic benchmark.** Slices of real brain MRI templates with
simulated tumours drawn in, made by `tumor-edge demo-data` (tumor-edge {__version__}). Use it to try the
pipeline; train on real scans with `tumor-edge train PATH`.

## Contents
{', '.join(config.classes)}: {n_train} Training and {n_test} Testing images per class, JPEG, grey in three
channels, about {config.size} px (width and height vary). Layout as the public Brain Tumor MRI Dataset:
`Training/<class>/Tr-xx_NNNN.jpg`, `Testing/<class>/Te-xx_NNNN.jpg`. `{MANIFEST}` records, per image, the
volume, plane, slice position and the lesion's centre (MNI-like mm) and radius. `{MASK_DIR}/<split>/<class>/
<image stem>.png` is each tumour image's lesion in that image's own pixels (255 where drawing the lesion changed
the pixel: tumour, necrosis, oedema, dural tail), flipped as the image was: the ground truth for explanations.

## Anatomy
{volumes}

Slices are axial, coronal and sagittal, tilted a few degrees, through the brain. Every class draws its slice
position from one distribution (a band through the sella, where a pituitary mass would show), so where a slice
was taken does not reveal its class.

## Held-out anatomy
{held_out}

## Simulated lesions (contrast-enhanced T1 appearance)
- **glioma**: intra-axial in a cerebral hemisphere; irregular; enhancing rim around a dark necrotic core;
  hypointense oedema around it; pushes the surrounding tissue (mass effect).
- **meningioma**: extra-axial on the inner skull surface or the falx; broad flat dural base;
  well-circumscribed, homogeneous enhancement; sometimes a CSF cleft and a dural tail.
- **pituitary**: midline mass in the sella, often with a suprasellar lobe, sometimes a cyst.
- **notumor**: none.
Sizes, shapes and intensities vary.

## Class-independent variety
Anatomy: a smooth random deformation (up to 4 mm), a random monotone remapping of tissue contrast, and for a
head sometimes its scalp and skull replaced by drawn ones, so a model learns lesions rather than one brain.
Acquisition: in-plane rotation (±15°), field of view and shift, slice tilt, left-right flips, gamma, contrast
and brightness, a smooth bias field, Rician noise, blur, canvas size and aspect, JPEG quality 70-96. All drawn
the same way for every class, from a random stream of their own, so global image statistics (brightness,
contrast, size, file size) carry no class signal.

## Reproduce
`tumor-edge demo-data OUT {args}` regenerates these files exactly (seed {config.seed}) with the same volumes
and library versions.
"""


def is_demo_dataset(root: Path) -> bool:
    """Whether `root` holds complete demo data written by this module."""
    card = Path(root) / DATASET_CARD
    try:
        return card.read_text().startswith(f"# {MARKER}") and (Path(root) / MANIFEST).is_file()
    except OSError:
        return False

