"""A NIfTI-1/2 volume (`.nii`, `.nii.gz`; nibabel, the `nifti` extra) cut into slices: the `nifti` reader."""

from __future__ import annotations

from pathlib import Path

from tumor_edge.runtime.readers.base import ReadOptions, Scan
from tumor_edge.runtime.volume import volume_scan
from tumor_edge.runtime.volume_nifti import read_nifti


def read(path: Path, options: ReadOptions) -> Scan:
    """The volume's slices along `options.axis` (`options.slices` of them), planned before any is cut."""
    return volume_scan(read_nifti(path), options, "nifti")
