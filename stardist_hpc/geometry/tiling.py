"""Boxes and regular grids of boxes over a 3D volume.

One grid type serves every stage that cuts the volume into pieces: prediction blocks, NMS tiles
and label chunks. A grid partitions the volume into boxes of ``box_shape`` voxels (the last box
of an axis is clipped to the volume); ``None`` in ``box_shape`` means the full axis.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: number of spatial axes (z, y, x).
N_AXES = 3


class Box(NamedTuple):
    """Half-open box ``[lo, hi)`` of voxels; unpacks as ``lo, hi``."""
    lo: tuple
    hi: tuple

    @property
    def shape(self):
        """Extent of the box along each axis."""
        return tuple(h - l for l, h in zip(self.lo, self.hi))

    def slices(self, origin=(0, 0, 0)):
        """Slices selecting the box in an array whose first voxel is at ``origin``."""
        return tuple(slice(l - o, h - o) for l, h, o in zip(self.lo, self.hi, origin))

    def grow(self, margin, image_shape):
        """The box enlarged by ``margin`` voxels on every side, clipped to the image."""
        return Box(tuple(max(0, l - m) for l, m in zip(self.lo, margin)),
                   tuple(min(s, h + m) for h, m, s in zip(self.hi, margin, image_shape)))

    def contains(self, points):
        """Boolean mask of the ``points`` (N, 3) that lie inside the box."""
        points = np.asarray(points).reshape(-1, N_AXES)
        return np.all((points >= np.asarray(self.lo)) & (points < np.asarray(self.hi)), axis=1)


def full_box_shape(image_shape, box_shape):
    """``box_shape`` with ``None`` replaced by the full image axis."""
    return tuple(int(s) if b is None else int(b) for s, b in zip(image_shape, box_shape))


@dataclass(frozen=True)
class Grid:
    """Regular grid of boxes of ``box_shape`` over ``image_shape``, numbered in C order.

    Parameters
    ----------
    image_shape : tuple of 3 int
    box_shape : tuple of 3 int or None
        ``None`` means the full axis.
    """
    image_shape: tuple
    box_shape: tuple

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "box_shape", full_box_shape(self.image_shape, self.box_shape))

    @property
    def counts(self):
        """Number of boxes along each axis."""
        return tuple(-(-s // b) for s, b in zip(self.image_shape, self.box_shape))

    def __len__(self):
        return int(np.prod(self.counts))

    def box(self, index):
        """The box with flat (C-order) ``index``."""
        position = np.unravel_index(index, self.counts)
        lo = tuple(int(p) * b for p, b in zip(position, self.box_shape))
        return Box(lo, tuple(min(l + b, s) for l, b, s in
                             zip(lo, self.box_shape, self.image_shape)))

    def bounds(self, indices):
        """Boxes ``[lo, hi)`` (two int64 arrays (len(indices), 3)) of flat ``indices``."""
        position = np.stack(np.unravel_index(np.asarray(indices, np.int64), self.counts), axis=1)
        lo = position * np.asarray(self.box_shape)
        return lo, np.minimum(lo + np.asarray(self.box_shape), np.asarray(self.image_shape))

    def __iter__(self):
        starts = [range(0, s, b) for s, b in zip(self.image_shape, self.box_shape)]
        for lo in itertools.product(*starts):
            yield Box(lo, tuple(min(l + b, s) for l, b, s in
                                zip(lo, self.box_shape, self.image_shape)))

    def batches(self, load_per_box, min_batch_load, min_batches):
        """The batch of each box: blocks of neighbouring boxes that carry about
        ``min_batch_load``, as long as there stay at least ``min_batches`` batches.

        Parameters
        ----------
        load_per_box : float
            The mean load (candidates, voxels, ...) of a box.
        min_batch_load : float
        min_batches : int

        Returns
        -------
        ndarray of int64 (len(self),)
            Batch index of each box (flat C-order index); batches are numbered in C order.
        """
        counts = np.asarray(self.counts)
        factor = self.batch_factor(load_per_box, min_batch_load, min_batches)
        position = np.stack(np.unravel_index(np.arange(len(self)), self.counts), axis=1)
        return np.ravel_multi_index(tuple((position // factor).T), tuple(-(-counts // factor)))

    def batch_factor(self, load_per_box, min_batch_load, min_batches):
        """Boxes per batch along z, y and x (see :meth:`batches`).

        Returns
        -------
        ndarray of int64 (3,)
        """
        counts, box = np.asarray(self.counts), np.asarray(self.box_shape)
        factor = np.ones(N_AXES, np.int64)
        while load_per_box * np.prod(factor) < min_batch_load:
            growable = np.flatnonzero(factor < counts)
            if len(growable) == 0:
                break
            # grow the batch along its shortest side: a compact batch reads the least halo
            axis = growable[np.argmin((factor * box)[growable])]
            trial = factor.copy()
            trial[axis] = min(2 * factor[axis], counts[axis])
            if np.prod(-(-counts // trial)) < min_batches:
                break
            factor = trial
        return factor

    def index_of(self, points):
        """Flat index of the box containing each of ``points`` (N, 3), which must be inside."""
        position = np.asarray(points, np.int64).reshape(-1, N_AXES) // np.asarray(self.box_shape)
        return np.ravel_multi_index(tuple(position.T), self.counts)

    def boxes_meeting(self, lo, hi):
        """Every (item, box) pair where the item's box ``[lo, hi)`` meets a grid box.

        Parameters
        ----------
        lo, hi : array_like of int, shape (N, 3)
            Half-open boxes of N items, in voxels; parts outside the image are ignored.

        Returns
        -------
        items, boxes : ndarray of int64
            Item number and flat grid box index of each pair, sorted by item then box.
        """
        first, span = self._box_ranges(np.asarray(lo, np.int64).reshape(-1, N_AXES),
                                       np.asarray(hi, np.int64).reshape(-1, N_AXES))
        n_pairs = np.prod(span, axis=1)
        items = np.repeat(np.arange(len(span)), n_pairs)
        # position of each pair inside its item's block of boxes, unravelled per item
        within = np.arange(len(items)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
        offsets = np.empty((len(items), N_AXES), np.int64)
        for axis in reversed(range(N_AXES)):
            offsets[:, axis] = within % span[items, axis]
            within //= span[items, axis]
        return items, np.ravel_multi_index(tuple((first[items] + offsets).T), self.counts)

    def _box_ranges(self, lo, hi):
        """First grid position and number of grid boxes met along each axis, per item."""
        shape, box = np.asarray(self.image_shape), np.asarray(self.box_shape)
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        first = lo // box
        span = np.where(hi > lo, (hi - 1) // box - first + 1, 0)
        return first, span


def grid_boxes(shape, box_shape):
    """Yield the boxes of a regular grid that partition ``shape``, in C order.

    Parameters
    ----------
    shape : tuple of 3 int
        Volume shape.
    box_shape : tuple of 3 (int or None)
        Box shape; ``None`` means the full axis. Boxes at the far end of an axis are clipped.

    Yields
    ------
    Box
        ``(lo, hi)`` of each box.
    """
    yield from Grid(shape, box_shape)
