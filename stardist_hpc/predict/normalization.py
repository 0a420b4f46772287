"""Percentile normalisation of a whole volume from a bounded, strided sample.

The percentiles are computed once from every ``stride``-th voxel along each axis (a regular
lattice over the whole volume, so every region is represented) and then applied to every block;
reading stays bounded by one plane, memory by ``sample_size``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Normalization:
    """Affine map ``(x - lo) / (hi - lo)`` from the ``pmin`` and ``pmax`` percentiles."""
    pmin: float
    pmax: float
    lo: float
    hi: float

    def apply(self, block):
        """Normalised float32 copy of ``block`` (csbdeep's ``normalize_mi_ma`` without clipping)."""
        scale = np.float32(1.0 / max(self.hi - self.lo, np.finfo(np.float32).eps))
        return (block.astype(np.float32) - np.float32(self.lo)) * scale


def sample_stride(shape, sample_size):
    """Smallest isotropic stride whose lattice has at most ``sample_size`` voxels."""
    stride = max(1, math.ceil((math.prod(shape) / sample_size) ** (1 / len(shape))))
    while math.prod(math.ceil(s / stride) for s in shape) > sample_size:
        stride += 1
    return stride


def strided_sample(volume, sample_size):
    """Voxels of ``volume`` on a regular lattice, read one z plane at a time.

    Parameters
    ----------
    volume : image_io.Volume
        Lazily read 3D volume.
    sample_size : int
        Upper bound on the number of sampled voxels.

    Returns
    -------
    sample : ndarray, 1D
    """
    stride = sample_stride(volume.shape, sample_size)
    _, ny, nx = volume.shape
    planes = [volume.read((z, 0, 0), (z + 1, ny, nx))[0, ::stride, ::stride].ravel()
              for z in range(0, volume.shape[0], stride)]
    return np.concatenate(planes)


def percentile_normalization(volume, pmin, pmax, sample_size):
    """Normalisation of ``volume`` from the ``pmin``/``pmax`` percentiles of a strided sample."""
    sample = strided_sample(volume, sample_size)
    lo, hi = np.percentile(sample, [pmin, pmax])
    log.info("normalisation: percentiles %g/%g of %d sampled voxels = %g/%g",
             pmin, pmax, sample.size, lo, hi)
    return Normalization(pmin=pmin, pmax=pmax, lo=float(lo), hi=float(hi))
