"""Real brain anatomy for demo data: T1 volumes, their brain masks, and where tumours grow in them.

Every volume is brought to the runtime's convention (RAS, 1 mm, white matter near 0.78) and given a signed
distance to the brain surface on a 2 mm grid. Landmarks are written once in the MNI152 frame and carried to each
volume through its brain's bounding box, so a user's volume gets them too, without registration.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from tumor_edge.errors import DatasetError
from tumor_edge.runtime.volume import white_matter_scale

# Reference frame: the MNI152 2009c brain's bounding box (mm), on the template nilearn ships.
REF_BRAIN_LO = np.array([-72.0, -107.0, -72.0])
REF_BRAIN_HI = np.array([72.0, 73.0, 82.0])
# The pituitary fossa (sella turcica), read off the Colin27 head's mid-sagittal slice (gland at y 0..10, z -25..-35).
REF_SELLA = np.array([0.0, 4.0, -29.0])

GRID_MM = 2  # resolution of the depth map and the candidate grids


@dataclass(frozen=True)
class VolumeSource:
    """One T1 volume to slice: a short name (used in file manifests and DATASET.md) and its file."""

    name: str
    path: Path
    description: str


def _nilearn_mni152() -> Path | None:
    # find_spec locates the package without importing nilearn (whose import costs seconds).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / \
        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return path if path.is_file() else None


def _mricron_colin27() -> Path | None:
    for share in (Path("/usr/share/mricron"), Path("/usr/local/share/mricron")):
        path = share / "templates" / "ch2.nii.gz"
        if path.is_file():
            return path
    return None


# name -> (finder, description). A registry: another packaged template is one line.
BUILTIN_VOLUMES: dict[str, tuple[Callable[[], Path | None], str]] = {
    "mni152": (_nilearn_mni152, "MNI152 ICBM 2009c nonlinear symmetric T1 template, skull-stripped, 1 mm "
                                "(shipped by nilearn); a synthetic scalp and skull are drawn around it"),
    "colin27": (_mricron_colin27, "Colin27 (ch2) single-subject T1 head with skull, 1 mm "
                                  "(Debian package mricron-data)"),
}


def builtin_volumes() -> list[VolumeSource]:
    """The packaged volumes found on this machine, in registry order."""
    return [VolumeSource(name, path, description) for name, (finder, description) in BUILTIN_VOLUMES.items()
            if (path := finder()) is not None]


def user_volume(path: Path, taken: set[str]) -> VolumeSource:
    """A volume the user passed, named as the packaged template it is, else by its file stem (unique in `taken`)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("volume file not found", path)
    for builtin in builtin_volumes():
        if builtin.path.resolve() == path.resolve() and builtin.name not in taken:
            return VolumeSource(builtin.name, path, builtin.description)
    stem = path.name.split(".")[0] or "volume"
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}{k}", k + 1
    return VolumeSource(name, path, f"user volume {path.name}")


@dataclass
class Anatomy:
    """A prepared volume: intensities, brain depth map, landmarks and where each lesion type may sit.

    Coordinates are voxel indices of `image` (RAS, 1 mm). `depth` lives on a 2 mm grid: voxel i of it is the
    block of `image` voxels 2i..2i+1, centred at 2i + 0.5.
    """

    image: np.ndarray  # float32 (X, Y, Z), white matter ~0.78
    depth: np.ndarray  # float32 2 mm grid, signed distance to the brain surface in mm, positive inside
    synthetic_head: bool  # skull-stripped volume: slices get a drawn scalp and skull
    brain_lo: np.ndarray  # brain bounding box, voxel coords
    brain_hi: np.ndarray
    glioma_sites: np.ndarray  # (N, 3) voxel coords: deep hemispheric white/grey matter
    convexity_sites: np.ndarray  # (M, 3) brain-surface points under the skull
    convexity_normals: np.ndarray  # (M, 3) unit outward normals
    falx_sites: np.ndarray  # (K, 3) points on the midline plane above the corpus callosum / frontal, occipital

    @property
    def scale(self) -> float:
        """mm of this brain per mm of the reference brain (mean of left-right and front-back extents)."""
        ext = self.brain_hi - self.brain_lo
        ref = REF_BRAIN_HI - REF_BRAIN_LO
        return float((ext[0] / ref[0] + ext[1] / ref[1]) / 2)

    def _anchors(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference anchor, this volume's anchor): the brain's centre line and its top."""
        ref = (REF_BRAIN_LO + REF_BRAIN_HI) / 2
        own = (self.brain_lo + self.brain_hi) / 2
        ref[2], own[2] = REF_BRAIN_HI[2], self.brain_hi[2]
        return ref, own

    def from_ref(self, mm: np.ndarray) -> np.ndarray:
        """Reference-frame mm -> this volume's voxel coords."""
        ref, own = self._anchors()
        return own + (np.asarray(mm, dtype=np.float64) - ref) * self.scale

    def to_ref(self, vox: np.ndarray) -> np.ndarray:
        """This volume's voxel coords -> reference-frame mm (inverse of `from_ref`)."""
        ref, own = self._anchors()
        return ref + (np.asarray(vox, dtype=np.float64) - own) / self.scale

    @property
    def sella(self) -> np.ndarray:
        return self.from_ref(REF_SELLA)


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, 256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3-D fill, then slice-wise fill along each axis (closes ventricles open to the cut brainstem)."""
    mask = ndi.binary_fill_holes(mask)
    for axis in range(3):
        mask = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=axis)
    return mask


def _downsample(image: np.ndarray, f: int) -> np.ndarray:
    x, y, z = (s - s % f for s in image.shape)
    return image[:x, :y, :z].reshape(x // f, f, y // f, f, z // f, f).mean(axis=(1, 3, 5))


def _brain_mask(coarse: np.ndarray) -> tuple[np.ndarray, bool]:
    """(brain mask on the 2 mm grid, whether the volume is skull-stripped). A head is split from its scalp as
    simple brain extraction does it: Otsu threshold, erode until the brain is its own component, dilate back."""
    top = float(np.percentile(coarse[coarse > 0], 99)) if np.any(coarse > 0) else 0.0
    if top <= 0:
        raise ValueError("volume is empty")
    fg = ndi.gaussian_filter(coarse, 0.7) > _otsu(coarse[coarse > 0.05 * top])
    ball = ndi.generate_binary_structure(3, 1)
    brain = _largest_component(ndi.binary_erosion(fg, ball, iterations=2))
    brain = ndi.binary_dilation(brain, ball, iterations=2) & fg
    brain = _fill_holes(ndi.binary_closing(brain, ball, iterations=2))
    # A head has scalp and marrow 4-14 mm outside the brain; a skull-stripped volume has nothing there.
    shell = ndi.binary_dilation(brain, iterations=7) & ~ndi.binary_dilation(brain, iterations=2)
    stripped = float(np.mean(coarse[shell] > 0.15 * top)) < 0.03 if shell.any() else True
    if stripped:
        core = _largest_component(coarse > 0.1 * top)
        return _fill_holes(ndi.binary_closing(core, iterations=2)), True
    return brain, False


def _canonical_1mm(path: Path) -> np.ndarray:
    """Read a NIfTI file as float32 RAS voxels at 1 mm; every reader failure becomes one DatasetError line."""
    try:
        import nibabel as nib
    except ImportError as err:  # the train extra brings it
        raise DatasetError("reading NIfTI volumes needs nibabel: pip install 'tumor-edge[train]'") from err
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asanyarray(img.dataobj).astype(np.float32)
        zooms = np.array(img.header.get_zooms()[:3], dtype=np.float64)
    except Exception as err:  # nibabel raises many types for one cause: not a readable volume
        raise DatasetError(f"not a readable NIfTI volume ({type(err).__name__}: {err})", path) from err
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 32:
        raise DatasetError(f"expected a 3-D brain volume, got shape {data.shape}", path)
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if np.any(np.abs(zooms - 1.0) > 0.05):
        data = ndi.zoom(data, zooms, order=1).astype(np.float32)
    return data


def _ref_regions(anat_to_ref: Callable[[np.ndarray], np.ndarray], points: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over `points` (voxel coords) for the regions the lesion rules need, in reference mm."""
    x, y, z = np.moveaxis(anat_to_ref(points), -1, 0)
    tentorium_z = -15.0 + 0.47 * (y + 81.0)  # slopes up from the occipital pole to the tectum
    infratentorial = (y < -30) & (z < tentorium_z)
    brainstem = (np.abs(x) < 16) & (y > -48) & (y < 0) & (z < -8)
    falx = (np.abs(x) < 1.5) & (
        ((z > 32) & (y > -60) & (y < 40)) | ((y >= 30) & (z > -12)) | ((y <= -60) & (z > tentorium_z + 8)))
    return {"infratentorial": infratentorial, "brainstem": brainstem, "falx": falx,
            "low": z < -45, "near_midline": np.abs(x) < 5}


@lru_cache(maxsize=8)
def _load_cached(path_str: str, mtime: float) -> Anatomy:
    path = Path(path_str)
    data = _canonical_1mm(path)
    coarse = _downsample(data, GRID_MM)
    try:
        brain, stripped = _brain_mask(coarse)
    except ValueError as err:
        raise DatasetError(str(err), path) from err
    if brain.sum() < 1000:
        raise DatasetError("found no brain in this volume (is it a T1 head or brain?)", path)
    scale = white_matter_scale(coarse[brain])
    if scale <= 0:
        raise DatasetError("brain intensities are not positive", path)
    image = np.clip(data * scale, 0, 3).astype(np.float32)
    coarse = coarse * scale
    depth = ((ndi.distance_transform_edt(brain) - ndi.distance_transform_edt(~brain)) * GRID_MM).astype(np.float32)
    idx = np.argwhere(brain)
    brain_lo = idx.min(axis=0) * GRID_MM + 0.5
    brain_hi = idx.max(axis=0) * GRID_MM + 0.5

    anat = Anatomy(image=image, depth=depth, synthetic_head=stripped, brain_lo=brain_lo,
                   brain_hi=brain_hi, glioma_sites=np.zeros((0, 3)), convexity_sites=np.zeros((0, 3)),
                   convexity_normals=np.zeros((0, 3)), falx_sites=np.zeros((0, 3)))
    inner = np.argwhere(depth > 0)
    pts = inner.astype(np.float64) * GRID_MM + 0.5
    reg = _ref_regions(anat.to_ref, pts)
    at = tuple(inner.T)
    # Glioma sites: inside the cerebral hemispheres, away from the surface, in tissue (not ventricle CSF).
    deep = (depth[at] >= 6.0) & (coarse[at] > 0.42)
    anat.glioma_sites = pts[deep & ~reg["infratentorial"] & ~reg["brainstem"] & ~reg["near_midline"]]
    # Convexity sites: the outer brain surface, with outward normals from the depth gradient.
    keep = (depth[at] <= GRID_MM * 1.01) & ~reg["brainstem"] & ~reg["low"] & ~reg["near_midline"]
    normals = -np.stack(np.gradient(depth), axis=-1)[tuple(inner[keep].T)]
    norms = np.linalg.norm(normals, axis=1, keepdims=True)
    ok = norms[:, 0] > 1e-6
    anat.convexity_sites = pts[keep][ok]
    anat.convexity_normals = normals[ok] / norms[ok]
    # Falx sites: the midline plane where the falx cerebri runs, inside the brain's outline.
    anat.falx_sites = pts[reg["falx"]]
    if len(anat.glioma_sites) == 0 or len(anat.convexity_sites) == 0:
        raise DatasetError("could not find cerebral hemispheres in this volume (is it a human T1 brain?)", path)
    return anat


def load_anatomy(source: VolumeSource) -> Anatomy:
    """Prepare a volume once per process (a few seconds); later calls reuse it."""
    path = Path(source.path).resolve()
    return _load_cached(str(path), path.stat().st_mtime)
