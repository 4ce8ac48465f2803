"""The `nifti` reader: NIfTI-1/2 volumes (`.nii`, `.nii.gz`) cut into slices, with nibabel from the `nifti` extra.

The header is read first and its shape x data type checked against the caps before a voxel is read (a 300-byte
header can claim terabytes); the file is opened only if it is a regular file, and read from that open file (no
memory map that a truncated file would break later). The stored values are kept as stored (int16 stays int16)
with the header's scl_slope/scl_inter beside them, and put in RAS order by a view (nibabel's orientation rule).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from tumor_edge.errors import InputImageError, MissingExtraError, first_line
from tumor_edge.runtime.readers.base import ReadOptions, Scan, check_volume_size, open_regular
from tumor_edge.runtime.volume import Volume, closest_ras, ras_spacing, to_ras, usable_scaling, volume_scan

NIFTI_EXTRA = "nifti"
MAX_HEADER_BYTES = 16 << 20  # header and extensions before the voxels


def _check_offset(fh, path: Path) -> None:
    """Refuse a header whose voxel offset puts megabytes of "extensions" before the voxels: nibabel reads the
    extensions whole, and in a .nii.gz a few bytes can inflate to them (the caps count voxels, not extensions)."""
    head = fh.read(176)
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 112:
            offset = struct.unpack(order + "f", head[108:112])[0]
        elif size == 540 and len(head) >= 176:
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not offset <= MAX_HEADER_BYTES:  # also NaN
            raise InputImageError(f"NIfTI header puts the voxels {offset:.0f} bytes into the file (limit "
                                  f"{MAX_HEADER_BYTES}: a corrupt header?)", path)
        return


def _image(nib, fh, path: Path):
    """A Nifti1Image or Nifti2Image over the open stream (the header's size field tells which)."""
    errors = []
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        fh.seek(0)
        try:
            return klass.from_stream(fh)
        except Exception as err:  # nibabel raises HeaderDataError, ImageFileError, EOFError, struct errors...
            errors.append(err)
    raise InputImageError(f"not a readable NIfTI file ({type(errors[0]).__name__}: {first_line(errors[0], 160)})",
                          path)


def read(path: Path, options: ReadOptions) -> Scan:
    """The volume's slices along `options.axis` (`options.slices` of them), planned before any is cut (4-D: its
    first volume, with a warning); one-line errors for the rest. The registry's `read_scan` has checked the file
    is regular, not empty and within the file-size cap."""
    try:
        import nibabel as nib
    except ImportError:
        raise MissingExtraError(f"reading NIfTI volumes needs the `{NIFTI_EXTRA}` extra (nibabel is not "
                                f"installed): pip install 'tumor-edge[{NIFTI_EXTRA}]'", path) from None
    notes = []
    with open_regular(path) as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if str(path).lower().endswith(".gz") else raw
        try:
            _check_offset(stream, path)
            image = _image(nib, stream, path)
            header = image.header
            shape = tuple(int(s) for s in header.get_data_shape())
            dtype = np.dtype(header.get_data_dtype())
            if len(shape) > 4:
                raise InputImageError(f"a {len(shape)}-D NIfTI file (shape {shape}) is not a brain volume; "
                                      "classify takes 3-D volumes (or the first volume of a 4-D series)", path)
            check_volume_size(shape, dtype.itemsize, path)
            if dtype.fields is not None or dtype.kind not in "iuf":
                raise InputImageError(f"NIfTI voxels of type {dtype} are not grey intensities", path)
            affine = image.affine
            zooms = tuple(float(z) for z in header.get_zooms()[:3])
            proxy = image.dataobj
            if len(shape) == 4:
                if shape[3] > 1:
                    notes.append(f"a 4-D series of {shape[3]} volumes; classifying the first")
                stored = np.asarray(proxy.slicer[..., 0].get_unscaled() if hasattr(proxy, "slicer")
                                    else proxy[..., 0])
            else:
                stored = np.asarray(proxy.get_unscaled())
            slope, intercept = usable_scaling(*header.get_slope_inter())  # scl_slope, scl_inter
        except InputImageError:
            raise
        except MemoryError:
            raise InputImageError("out of memory while reading the volume", path) from None
        except Exception as err:  # truncated gzip (EOFError), short data, zlib errors, bad headers
            raise InputImageError(f"unreadable NIfTI volume ({type(err).__name__}: {first_line(err, 160)}): "
                                  "truncated or corrupt?", path) from None
    if stored.shape[:3] != shape[:3]:
        raise InputImageError(f"NIfTI data has shape {stored.shape}, its header says {shape}", path)
    try:
        ornt = closest_ras(affine[:3, :3])
    except ValueError as err:
        raise InputImageError(f"NIfTI orientation is unusable ({err})", path) from None
    zooms = tuple(z if np.isfinite(z) and z > 0 else 1.0 for z in zooms)
    if any(not np.isfinite(z) or z <= 0 for z in header.get_zooms()[:3]):
        notes.append("voxel sizes in the header are zero or not numbers; 1 mm assumed")
    return volume_scan(Volume(str(path), to_ras(stored, ornt), ras_spacing(zooms, ornt), slope, intercept, notes),
                       options, "nifti")
