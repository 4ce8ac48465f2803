"""The images a benchmark feeds: real preprocessed scans, never zeros, since latency can depend on the values
(denormals, saturating int8 activations). The run's test split or a folder the user names, else synthetic
head-phantom slices (labelled synthetic), all prepared before timing starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.data.dataset import Sample, load_pixels, read_split
from tumor_edge.errors import DatasetError, TumorEdgeError
from tumor_edge.runtime import Preprocessing, is_scan_file


@dataclass
class ImagePool:
    """Decoded, resized uint8 images (N, H, W, 3) and where they came from."""

    pixels: np.ndarray
    source: str
    files: list[Path] = field(default_factory=list)


def _round_robin(samples: list, count: int) -> list:
    """Up to `count` samples taking each class in turn, so every class is represented."""
    by_label: dict[int, list] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    queues = [by_label[k] for k in sorted(by_label)]
    out: list = []
    i = 0
    while len(out) < count and any(i < len(q) for q in queues):
        out.extend(q[i] for q in queues if i < len(q))
        i += 1
    return out[:count]


def _load(samples: list, spec: Preprocessing, source: str) -> ImagePool:
    loaded = load_pixels(samples, spec, label="loading benchmark images", show_progress=False)
    if len(loaded.samples) == 0:
        raise DatasetError(f"none of the {len(samples)} images could be read ({loaded.failures[:1]})")
    return ImagePool(loaded.pixels, f"{source} ({len(loaded.samples)} images)", [s.path for s in loaded.samples])


def pool_from_run(run_dir: Path, spec: Preprocessing, count: int) -> ImagePool | None:
    """The first `count` images of the run's test split, classes in turn; None when the files are not at hand."""
    run = RunFolder(run_dir)
    if not run.split.is_file():
        return None
    try:
        _, samples = read_split(run.split, "test")
        if not samples or not samples[0].path.exists():  # the dataset moved: the run config knows its root
            root = run.read_config().data_root
            _, samples = read_split(run.split, "test", Path(root)) if root else (None, [])
    except (OSError, KeyError, ValueError, TypeError, TumorEdgeError):
        return None
    samples = [s for s in _round_robin(samples, count) if s.path.is_file()]
    if not samples:
        return None
    return _load(samples, spec, f"test split of {run_dir}")


def pool_from_folder(folder: Path, spec: Preprocessing, count: int) -> ImagePool:
    """Up to `count` scans found under a folder (sorted, recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("image folder not found", folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_scan_file(p))
    if not files:
        raise DatasetError("no images in this folder", folder)
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    return _load([Sample(p, 0) for p in chosen], spec, f"images from {folder}")


def phantom_slice(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A synthetic grey head-like slice (skull ring, textured brain, a bright lesion) as uint8 RGB."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.03)
    r = np.hypot((xx - cx) / 0.40, (yy - cy) / 0.46)
    brain = 95 + 30 * np.sin(xx * rng.uniform(15, 30)) * np.cos(yy * rng.uniform(15, 30))
    img = np.where(r < 0.92, brain, np.where(r < 1.0, 200.0, 4.0))
    lx, ly = cx + rng.uniform(-0.2, 0.2), cy + rng.uniform(-0.25, 0.25)
    img = np.where(np.hypot(xx - lx, yy - ly) < rng.uniform(0.04, 0.1), 225.0, img)
    img = img + rng.normal(0, 7, img.shape)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def synthetic_pool(spec: Preprocessing, count: int, seed: int = 0) -> ImagePool:
    rng = np.random.default_rng(seed)
    pixels = np.stack([phantom_slice(spec.size, rng) for _ in range(count)])
    return ImagePool(pixels, f"synthetic head-phantom slices ({count} images, generated)")


def write_probe_image(pool: ImagePool, folder: Path) -> Path:
    """One image file for the cold-start probe: the pool's first real file, else a PNG of its first image."""
    if pool.files:
        return pool.files[0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "probe_synthetic.png"
    Image.fromarray(pool.pixels[0]).save(path)
    return path


def make_batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Contiguous float32 batches cycling through the pool, so successive runs see different images."""
    n = len(inputs)  # never 0: every pool holds at least one image
    count = max(1, -(-n // batch))
    return [np.ascontiguousarray(inputs[[(j * batch + k) % n for k in range(batch)]], dtype=np.float32)
            for j in range(count)]
