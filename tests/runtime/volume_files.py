"""Small real volumes for the volume tests: NIfTI files written with nibabel, DICOM series with pydicom.

The "head" is a box of tissue with one bright octant at the patient's left, anterior, superior corner, so each
plane of `PLANES` shows it in a known quadrant of the image, and the quadrant model (tests/runtime/models.py)
names that quadrant: axial and coronal slices through it -> top-right (meningioma), sagittal -> top-left
(glioma). Helpers only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RAS_SHAPE = (40, 44, 32)
BOX = ((6, 34), (6, 38), (4, 28))  # tissue: [lo, hi) along x (right), y (anterior), z (superior)
CENTRE = tuple((lo + hi) // 2 for lo, hi in BOX)  # 20, 22, 16


def head(dtype=np.int16) -> np.ndarray:
    """RAS voxels: tissue 100, the left-anterior-superior octant 400 (RAS: low x is the patient's left)."""
    ras = np.zeros(RAS_SHAPE, dtype=np.float32)
    (x0, x1), (y0, y1), (z0, z1) = BOX
    ras[x0:x1, y0:y1, z0:z1] = 100
    cx, cy, cz = CENTRE
    ras[x0:cx, cy + 1:y1, cz + 1:z1] = 400
    return ras.astype(dtype)


def stored_form(ras: np.ndarray, spacing=(1.0, 1.0, 2.0), perm=(2, 0, 1), flips=(True, False, True)
                ) -> tuple[np.ndarray, np.ndarray]:
    """`ras` stored in another voxel order (stored axis a runs along RAS axis perm[a], reversed when flips[a])
    and the affine that says so: a reader that honours the affine gets `ras` back."""
    stored = ras.transpose(perm)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for a, (axis, flip) in enumerate(zip(perm, flips)):
        if flip:
            stored = np.flip(stored, axis=a)
        affine[axis, a] = -spacing[axis] if flip else spacing[axis]
        if flip:
            affine[axis, 3] = (ras.shape[axis] - 1) * spacing[axis]
    return np.ascontiguousarray(stored), affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_raw_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16, data_bytes: int = 64,
                    vox_offset: float = 352, gz: bool = False) -> Path:
    """A .nii whose header claims `shape` (and where the voxels start) followed by only `data_bytes` bytes."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header["dim"][0] = len(shape)
    header["dim"][1:1 + len(shape)] = shape
    header["pixdim"][1:1 + len(shape)] = 1.0
    header["vox_offset"] = vox_offset
    header["magic"] = b"n+1"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header.binaryblock + b"\0" * 4 + b"\0" * data_bytes
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_series(folder: Path, ras: np.ndarray, series_uid: str | None = None, sizes: list | None = None,
                 description: str = "T1 AX", prefix: str = "im", photometric: str = "MONOCHROME2",
                 rescale: list | None = None) -> Path:
    """An axial DICOM series of `ras` (one file a z slice, LPS patient axes as scanners write them), file
    names in reverse slice order so the reader must sort by ImagePositionPatient. `sizes`: per-slice (rows, cols)
    to make a broken series; `rescale`: per-slice (slope, intercept), the stored values divided accordingly."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.runtime.models import write_dicom

    uid = series_uid or generate_uid()
    n = ras.shape[2]
    for k in range(n):
        # LPS pixel (row r, column c): column direction +x_LPS = patient's left = RAS x decreasing; row
        # direction +y_LPS = posterior = RAS y decreasing.
        pixels = ras[::-1, ::-1, k].T  # (rows: y from anterior to posterior, columns: x from right to left)
        if sizes is not None:
            pixels = np.zeros(sizes[k], dtype=pixels.dtype) + 100
        slope, intercept = rescale[k] if rescale else (1, 0)
        stored = np.round((pixels.astype(np.float64) - intercept) / slope).astype(np.uint16)
        path = write_dicom(folder / f"{prefix}{n - k:03d}.dcm", stored, photometric=photometric,
                           rescale=rescale[k] if rescale else None)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.save_as(path, enforce_file_format=True)
    return folder
