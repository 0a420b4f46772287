"""Percentile normalisation of a whole volume, as StarDist users normalise a whole image.

``csbdeep.utils.normalize(img, pmin, pmax, axis=(0, 1, 2))`` maps the ``pmin``/``pmax``
percentiles of every voxel to 0/1. Three ways to get the two values, computed once and applied
to every block:

* ``exact`` (8/16-bit integer images): a histogram of every voxel, streamed in slabs of z
  planes (one read pass, memory bounded by the histogram and one slab), gives the order
  statistics, interpolated as ``numpy.percentile`` does: the values are numpy's bit for bit.
* ``sample`` (default for floats): the percentiles of every ``stride``-th voxel along each axis
  (a regular lattice over the whole volume), at most ``sample_size`` voxels.
* fixed ``lo``/``hi`` given by the user, to normalise several volumes alike.

An image read with several channels (a multi-channel model) is normalised per channel, as
``normalize(img, pmin, pmax, axis=(0, 1, 2))`` normalises a z, y, x, c image: each channel's
percentiles (by the same method) map that channel; fixed ``lo``/``hi`` map every channel.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


#: normalisation methods: exact percentiles, percentiles of a sample, values given by the user.
METHOD_EXACT, METHOD_SAMPLE, METHOD_FIXED = "exact", "sample", "fixed"
#: csbdeep's ``normalize_mi_ma`` default ``eps``, added to the denominator.
CSBDEEP_EPS = 1e-20
#: largest integer itemsize (bytes) histogrammed for exact percentiles: 65536 bins.
MAX_EXACT_ITEMSIZE = 2
#: voxels per slab of the histogram pass (bincount makes an 8-byte index per voxel).
HISTOGRAM_SLAB_VOXELS = 4 * 2**20


@dataclass(frozen=True)
class Normalization:
    """Affine map ``(x - lo) / (hi - lo + eps)``; ``method`` says where ``lo``/``hi`` came from.

    ``lo`` and ``hi`` are tuples (one value per channel, along a block's last axis) for an
    image read with several channels.
    """
    pmin: float
    pmax: float
    lo: float | tuple
    hi: float | tuple
    method: str = METHOD_SAMPLE

    def apply(self, block):
        """Normalised float32 copy of ``block``, computed as csbdeep's ``normalize_mi_ma``
        (float32, no clipping), so a block's values are those of the normalised whole image."""
        x = block.astype(np.float32)
        lo, hi = np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32)
        x -= lo
        x /= hi - lo + np.float32(CSBDEEP_EPS)
        return x


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


def default_method(dtype):
    """``exact`` for 8/16-bit integer images, ``sample`` otherwise (floats, wide integers)."""
    return METHOD_EXACT if _histogram_offset(dtype) is not None else METHOD_SAMPLE


def _histogram_offset(dtype):
    """Value subtracted to make histogram bins of ``dtype`` start at 0 (None: not binnable)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui" or dtype.itemsize > MAX_EXACT_ITEMSIZE:
        return None
    return int(np.iinfo(dtype).min)


def volume_histogram(volume):
    """Counts of every value of an 8/16-bit integer ``volume``, read in slabs of z planes.

    Returns
    -------
    counts : ndarray of int64
        ``counts[i]`` voxels have the value ``i + offset``.
    offset : int
    """
    offset = _histogram_offset(volume.dtype)
    n_bins = 2 ** (8 * volume.dtype.itemsize)
    counts = np.zeros(n_bins, np.int64)
    nz, ny, nx = volume.shape
    planes = max(1, HISTOGRAM_SLAB_VOXELS // (ny * nx))
    for z in range(0, nz, planes):
        slab = volume.read((z, 0, 0), (min(z + planes, nz), ny, nx)).ravel()
        bins = slab if offset == 0 else slab.astype(np.int64) - offset
        counts += np.bincount(bins, minlength=n_bins)
    return counts, offset


def histogram_percentiles(counts, offset, dtype, percentiles):
    """``numpy.percentile`` (method 'linear') of the ``dtype`` voxels a histogram counts.

    Follows numpy's steps, so the values are numpy's bit for bit: virtual index
    ``(n - 1) * q``, its floor and the next order statistic (both the largest value at and past
    the end), and numpy's ``_lerp``, whose difference of neighbours is taken in ``dtype`` (for
    int16 numpy's difference wraps around past 32767; csbdeep, hence StarDist, inherits that).
    """
    n = int(counts.sum())
    q = np.true_divide(np.asarray(percentiles, np.float64), 100)
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    gamma = virtual - previous
    cumulative = np.cumsum(counts)

    def order_statistic(k):
        k = np.where(k >= n - 1, n - 1, k).astype(np.int64)
        return (np.searchsorted(cumulative, k, side="right") + offset).astype(dtype)

    a, b = order_statistic(previous), order_statistic(previous + 1)
    diff = b - a
    result = a + diff * gamma
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), result)


def exact_normalization(volume, pmin, pmax):
    """Normalisation from the exact percentiles of every voxel of an 8/16-bit integer image."""
    if _histogram_offset(volume.dtype) is None:
        raise UserError("prediction.normalize.method: 'exact' needs an 8- or 16-bit integer "
                        f"image, got dtype {volume.dtype}; use 'sample' or fixed lo/hi")
    counts, offset = volume_histogram(volume)
    lo, hi = histogram_percentiles(counts, offset, volume.dtype, [pmin, pmax])
    log.info("normalisation: exact percentiles %g/%g of all %d voxels = %r/%r", pmin, pmax,
             math.prod(volume.shape), float(lo), float(hi))
    return Normalization(pmin=pmin, pmax=pmax, lo=float(lo), hi=float(hi), method=METHOD_EXACT)


def percentile_normalization(volume, pmin, pmax, sample_size):
    """Normalisation of ``volume`` from the ``pmin``/``pmax`` percentiles of a strided sample."""
    sample = strided_sample(volume, sample_size)
    lo, hi = np.percentile(sample, [pmin, pmax])
    log.info("normalisation: percentiles %g/%g of %d sampled voxels = %g/%g",
             pmin, pmax, sample.size, lo, hi)
    return Normalization(pmin=pmin, pmax=pmax, lo=float(lo), hi=float(hi), method=METHOD_SAMPLE)


def configured_normalization(volume, section):
    """The normalisation a ``NormalizeSection`` asks for on ``volume``, per channel when it
    reads several (see the module docstring).

    Fixed ``lo``/``hi`` win; otherwise ``method`` (None: :func:`default_method`). The strided
    sample is read with every method: it finds unreadable or non-finite pixels before
    TensorFlow takes its time to load.
    """
    if volume.n_channels == 1:
        return _channel_normalization(volume, section)
    log.info("normalising channels %s one by one, in this order", list(volume.channel))
    parts = [_channel_normalization(volume.channel_volume(i), section)
             for i in range(volume.n_channels)]
    lo, hi = (tuple(getattr(p, name) for p in parts) for name in ("lo", "hi"))
    if section.lo is not None:   # the same fixed values map every channel
        lo, hi = section.lo, section.hi
    return dataclasses.replace(parts[0], lo=lo, hi=hi)


def _channel_normalization(volume, section):
    """:func:`configured_normalization` of a volume that reads one channel."""
    method = section.method or default_method(volume.dtype)
    if section.lo is None and method == METHOD_SAMPLE:
        return percentile_normalization(volume, section.pmin, section.pmax, section.sample_size)
    strided_sample(volume, section.sample_size)
    if section.lo is not None:
        log.info("normalisation: fixed lo/hi %r/%r", section.lo, section.hi)
        return Normalization(pmin=float("nan"), pmax=float("nan"), lo=section.lo,
                             hi=section.hi, method=METHOD_FIXED)
    return exact_normalization(volume, section.pmin, section.pmax)
