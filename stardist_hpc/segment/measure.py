"""Per-nucleus intensities, measured by the labeling tasks from the chunk they render.

The ``measure`` section of the HPC config names the original image (any file the GPU step
reads) and its channels. A labeling task reads the same region of the image as the label chunk
it rendered, one channel at a time, and keeps per object present in the chunk its voxel
statistics (:class:`ChunkIntensities`: mean, sum of squared deviations from the mean, minimum,
maximum and sum, in float64), saved with the chunk checkpoint. The driver merges them chunk by
chunk with Chan et al.'s parallel update of mean and squared deviations
(:class:`IntensityMerge`), holding only per-object arrays. Nothing reads the labels again.

Sums, minima, maxima and counts are exact for integer images (float64 holds every integer up to
2^53, far above the sum of 2^16-bit values over 10^9 voxels); the mean is the exact sum divided
by the count, and the standard deviation (population, ``ddof=0``, as ``scipy.ndimage``) is exact
to float64 rounding.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import MEASURE_ALL_CHANNELS, ImageSection, MeasureSection
from ..errors import UserError
from ..io.image import open_volume

#: how the image reader's error messages name the keys, and the measure keys they stand for.
_IMAGE_KEYS = {"image.path": "measure.image", "image.dataset": "measure.dataset",
               "image.axes": "measure.axes", "image.channel": "measure.channels"}


@dataclass(frozen=True)
class MeasureSpec:
    """The resolved ``measure`` section: what the labeling tasks read (a SegmentParams field).

    ``image_size`` and ``image_mtime_ns`` identify the image file, so that checkpoints measured
    on another image are not reused.
    """
    image: Path
    dataset: str | None
    axes: str | None
    missing_chunks: str
    channels: tuple
    image_size: int
    image_mtime_ns: int

    def image_section(self, channel):
        """The ImageSection that opens ``channel`` of the image."""
        return ImageSection(path=self.image, dataset=self.dataset, channel=channel,
                            axes=self.axes, missing_chunks=self.missing_chunks)


def _as_measure_error(error):
    """``error`` of the image reader (its message documented with the image keys), naming
    the measure key instead of the image key it starts with."""
    message = str(error)
    for image_key, measure_key in _IMAGE_KEYS.items():
        if message.startswith(image_key):
            error.args = (measure_key + message[len(image_key):],)
    return error


def _open(spec: MeasureSpec, channel):
    try:
        return open_volume(spec.image_section(channel))
    except UserError as error:
        raise _as_measure_error(error) from None


def resolve_measure(section: MeasureSection, image_shape) -> MeasureSpec | None:
    """Check the ``measure`` section against the label volume; None when it measures nothing.

    Raises
    ------
    UserError
        For a missing or unreadable image, an image whose shape differs from the label
        volume's, or channels the image does not have (one line naming the key).
    """
    if section.image is None:
        return None
    if not section.image.exists():
        raise UserError(f"measure.image: file {section.image} does not exist")
    stat = section.image.stat()
    spec = MeasureSpec(section.image, section.dataset, section.axes, section.missing_chunks,
                       (), stat.st_size, stat.st_mtime_ns)
    with _open(spec, 0) as volume:
        if volume.shape != tuple(image_shape):
            raise UserError(f"measure.image: expected an image of the label volume's shape "
                            f"{tuple(image_shape)} (z, y, x), got {volume.shape} in "
                            f"{section.image}")
        n_channels = volume.stored_channels
    channels = (tuple(range(n_channels)) if section.channels == MEASURE_ALL_CHANNELS
                else section.channels)
    missing = [c for c in channels if c >= n_channels]
    if missing:
        raise UserError(f"measure.channels: expected channel indices 0..{n_channels - 1} of "
                        f"{section.image} ({n_channels} channel(s)), got {list(channels)}")
    return dataclasses.replace(spec, channels=tuple(channels))


# ---------------------------------------------------------------------------------------------
# one chunk


class ChunkIntensities(NamedTuple):
    """Per object of a chunk (the rows of its ChunkStats) and channel (columns)."""
    intensity_mean: np.ndarray   # float64 (m, c)
    intensity_m2: np.ndarray     # float64 (m, c): sum of squared deviations from the mean
    intensity_min: np.ndarray    # float64 (m, c)
    intensity_max: np.ndarray    # float64 (m, c)
    intensity_sum: np.ndarray    # float64 (m, c)


def no_intensities(n_channels):
    """The record of a chunk without objects."""
    empty = np.zeros((0, n_channels))
    return ChunkIntensities(*(empty for _ in ChunkIntensities._fields))


def measure_chunk(spec: MeasureSpec, box, labels, ids):
    """Intensity statistics of the objects ``ids`` (sorted, all present) in one label chunk.

    Parameters
    ----------
    spec : MeasureSpec
    box : Box
        The chunk's region of the image.
    labels : ndarray of uint32, shape ``box.shape``
    ids : ndarray of uint32 (m,)
        The ids present in ``labels``, increasing (``ChunkStats.ids``).

    Returns
    -------
    ChunkIntensities
    """
    n_channels = len(spec.channels)
    if len(ids) == 0:
        return no_intensities(n_channels)
    flat = np.flatnonzero(labels)
    rows = np.searchsorted(ids, labels.ravel()[flat])
    order = np.argsort(rows, kind="stable")
    flat, rows = flat[order], rows[order]
    counts = np.bincount(rows, minlength=len(ids)).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts[:-1]).astype(np.int64)])
    columns = []
    for channel in spec.channels:
        with _open(spec, channel) as volume:
            values = volume.read(box.lo, box.hi).ravel()[flat].astype(np.float64)
        total = np.add.reduceat(values, starts)
        mean = total / counts
        m2 = np.add.reduceat((values - mean[rows]) ** 2, starts)
        columns.append((mean, m2, np.minimum.reduceat(values, starts),
                        np.maximum.reduceat(values, starts), total))
    return ChunkIntensities(*(np.stack(parts, axis=1) for parts in zip(*columns)))


# ---------------------------------------------------------------------------------------------
# the driver's merge


class IntensityMerge:
    """Per-object statistics merged over chunks (arrays of K objects x channels, by id - 1)."""

    def __init__(self, n_objects, channels):
        shape = (n_objects, len(channels))
        self.channels = tuple(channels)
        self.count = np.zeros(n_objects, np.int64)
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)
        self.sum = np.zeros(shape)
        self.min = np.full(shape, np.inf)
        self.max = np.full(shape, -np.inf)

    def add(self, ids, voxel_count, chunk: ChunkIntensities):
        """Merge one chunk's statistics (each id at most once per chunk).

        Chan, Golub & LeVeque's update: with counts a, b, means and squared deviations of
        both parts, ``delta = mean_b - mean_a``, the merged mean is ``mean_a + delta * b / n``
        and the merged squared deviations ``m2_a + m2_b + delta^2 * a * b / n``.
        """
        at = np.asarray(ids, np.int64) - 1
        a = self.count[at][:, None].astype(np.float64)
        b = np.asarray(voxel_count, np.float64)[:, None]
        n = a + b
        delta = chunk.intensity_mean - self.mean[at]
        self.mean[at] += delta * (b / n)
        self.m2[at] += chunk.intensity_m2 + delta ** 2 * (a * b / n)
        self.sum[at] += chunk.intensity_sum
        self.min[at] = np.minimum(self.min[at], chunk.intensity_min)
        self.max[at] = np.maximum(self.max[at], chunk.intensity_max)
        self.count[at] += np.asarray(voxel_count, np.int64)

    def columns(self):
        """Per channel index: mean, std, min, max and sum (NaN for objects without voxels,
        whose sum is 0). The mean is the sum divided by the count: exact for integer images."""
        empty = (self.count == 0)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum / self.count[:, None]
            std = np.sqrt(self.m2 / self.count[:, None])
        nan = np.where(empty, np.nan, 0.0)
        stats = {"mean": mean + nan, "std": std + nan, "min": self.min + nan,
                 "max": self.max + nan, "sum": self.sum}
        return {c: {name: values[:, k] for name, values in stats.items()}
                for k, c in enumerate(self.channels)}
