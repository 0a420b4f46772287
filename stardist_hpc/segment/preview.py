"""Small views of the label volume for the QC report, made by the labeling tasks.

A labeling task keeps, of the chunk it rendered, the label maximum projections along z, y and x
and the labels of a few z planes, each sampled on a coarse grid of voxels whose absolute
coordinates are multiples of :func:`preview_steps` (so chunks fit together without overlap).
They are saved with the chunk checkpoint (:class:`ChunkPreview`); the driver pastes them into
arrays of at most :data:`PREVIEW_PIXELS` per side (:class:`PreviewMerge`). Nobody reads the
whole volume.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

#: longest side in pixels of a preview: a figure's width on screen, where every nucleus of a
#: typical volume is still a few pixels wide.
PREVIEW_PIXELS = 512
#: depths (fractions of the z extent) of the planes the report shows with outlines.
PLANE_FRACTIONS = (0.25, 0.5, 0.75)


def preview_steps(image_shape):
    """Sampling step along z, y and x: at most PREVIEW_PIXELS samples per axis."""
    return tuple(max(1, math.ceil(n / PREVIEW_PIXELS)) for n in image_shape)


def preview_shape(image_shape):
    """Samples along z, y and x."""
    return tuple(math.ceil(n / s) for n, s in zip(image_shape, preview_steps(image_shape)))


def plane_positions(image_shape):
    """The z positions of the planes shown with outlines (distinct, increasing)."""
    depth = image_shape[0]
    return tuple(sorted({min(depth - 1, int(f * depth)) for f in PLANE_FRACTIONS}))


class ChunkPreview(NamedTuple):
    """One chunk's part of the previews (sampled on the global preview grid)."""
    preview_z: np.ndarray        # uint32 (ny, nx): maximum over all z of the chunk
    preview_y: np.ndarray        # uint32 (nz, nx)
    preview_x: np.ndarray        # uint32 (nz, ny)
    preview_planes: np.ndarray   # uint32 (p, ny, nx): labels of the report's planes in the chunk


def _first_samples(box, steps):
    """Index, inside the chunk, of its first sampled voxel along each axis."""
    return tuple((-lo) % s for lo, s in zip(box.lo, steps))


def preview_chunk(image_shape, box, labels):
    """The previews of one rendered chunk.

    Parameters
    ----------
    image_shape : tuple of 3 int
    box : Box
        The chunk's region.
    labels : ndarray of uint32, shape ``box.shape``

    Returns
    -------
    ChunkPreview
    """
    steps = preview_steps(image_shape)
    z, y, x = (slice(f, None, s) for f, s in zip(_first_samples(box, steps), steps))
    planes = [p - box.lo[0] for p in plane_positions(image_shape) if box.lo[0] <= p < box.hi[0]]
    return ChunkPreview(preview_z=labels[:, y, x].max(axis=0, initial=0),
                        preview_y=labels[z, :, x].max(axis=1, initial=0),
                        preview_x=labels[z, y, :].max(axis=2, initial=0),
                        preview_planes=labels[planes][:, y, x])


class PreviewMerge:
    """The previews of the whole volume, pasted together chunk by chunk."""

    def __init__(self, image_shape):
        self.image_shape = tuple(image_shape)
        self.steps = preview_steps(image_shape)
        nz, ny, nx = preview_shape(image_shape)
        self.projections = {"z": np.zeros((ny, nx), np.uint32),
                            "y": np.zeros((nz, nx), np.uint32),
                            "x": np.zeros((nz, ny), np.uint32)}
        self.planes = {p: np.zeros((ny, nx), np.uint32) for p in plane_positions(image_shape)}

    def _spans(self, box):
        """Slices of the preview grid that the chunk ``box`` covers, along z, y and x."""
        return tuple(slice(-(-lo // s), -(-hi // s)) for lo, hi, s in
                     zip(box.lo, box.hi, self.steps))

    def add(self, box, preview: ChunkPreview):
        """Paste one chunk's previews."""
        z, y, x = self._spans(box)
        for target, part in ((self.projections["z"][y, x], preview.preview_z),
                             (self.projections["y"][z, x], preview.preview_y),
                             (self.projections["x"][z, y], preview.preview_x)):
            np.maximum(target, part, out=target)
        inside = [p for p in self.planes if box.lo[0] <= p < box.hi[0]]
        for p, plane in zip(inside, preview.preview_planes):
            self.planes[p][y, x] = plane
