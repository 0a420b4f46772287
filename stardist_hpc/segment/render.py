"""Render kept polyhedra into label chunks, voxel for voxel as StarDist renders the whole volume.

Two renderers decide which voxels a polyhedron covers: ``'stardist'``, the port of StarDist's
own below, and ``'fast'``, the O(1) cone-table test of
:mod:`stardist_hpc.geometry.cone_table` (same voxels on every polyhedron the tests and
benchmarks render, several times faster).

StarDist's ``polyhedron_to_label`` decides each voxel in float32 arithmetic on *absolute*
coordinates, so it cannot simply be called per chunk with points shifted to the chunk origin:
the shift changes the rounding, and about one boundary voxel in 10^5 flips (it also hangs when a
polyhedron lies wholly before the chunk along y or x). This module therefore ports StarDist
0.9.2's "full" render mode (``_COMMON_polyhedron_to_label``) operation for operation, in
absolute coordinates, restricted to one chunk:

* the bounding box of a polyhedron is its vertices rounded half to even (``lrint``);
* a voxel is inside if it lies in the kernel (all face half-spaces, built in float32), or in the
  convex hull (Qhull) and in one of the tetrahedra (centre, face) (float32 determinants);
* polyhedra are rendered by increasing id (decreasing probability) and the first one wins.

The convex-hull planes come from SciPy's Qhull instead of StarDist's; both are exact to ~1e-13,
far below the float32 effects that decide voxels.
"""
from __future__ import annotations

import time
import zlib
from typing import NamedTuple

import numba
import numpy as np

from ..config import LABELING_BACKEND_FAST
from ..geometry.cone_table import cone_table, prepare_polyhedra, rasterise, reach
from ..geometry.hulls import hull_equations
from ..geometry.rays import bbox_of_vertices, polyhedron_vertices, ray_geometry
from ..geometry.tiling import Box
from ..io.atomic import synced_at_end
from ..io.checkpoint import save_record, write_bytes
from ..io.chunks import (
    NO_LABELS,
    ChunkIdentity,
    chunk_files,
    chunk_stats,
    compress_storage_chunks,
    split_stored,
)
from ..io.input_pin import check_pinned
from ..io.ome_zarr import write_base_chunks
from ..io.survivors import SurvivorFile
from .chunk_extras import RenderedChunk, chunk_extras
from .params import MIN_TASKS, SegmentParams

#: a half-space as stored: normal (z, y, x) and offset.
HALFSPACE_WIDTH = 4


# ---------------------------------------------------------------------------------------------
# the per-voxel tests of StarDist's stardist3d_impl.cpp, in the same float32/float64 operations


@numba.njit(cache=True, nogil=True)
def _inside_halfspace(z, y, x, az, ay, ax, bz, by, bx, cz, cy, cx):
    """StarDist's inside_halfspace: sign of a float32 determinant."""
    m00, m01, m02 = bz - az, by - ay, bx - ax
    m10, m11, m12 = cz - az, cy - ay, cx - ax
    m20, m21, m22 = z - az, y - ay, x - ax
    det = (m00 * (m11 * m22 - m21 * m12) - m01 * (m10 * m22 - m12 * m20)
           + m02 * (m10 * m21 - m11 * m20))
    return det >= 0


@numba.njit(cache=True, nogil=True)
def inside_star(z, y, x, centre, vertices, faces):
    """StarDist's inside_polyhedron: inside one tetrahedron (centre, face)."""
    rz, ry, rx = centre[0], centre[1], centre[2]
    for f in range(faces.shape[0]):
        a, b, c = vertices[faces[f, 0]], vertices[faces[f, 1]], vertices[faces[f, 2]]
        if (_inside_halfspace(z, y, x, a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2])
                and _inside_halfspace(z, y, x, rz, ry, rx, b[0], b[1], b[2], a[0], a[1], a[2])
                and _inside_halfspace(z, y, x, rz, ry, rx, c[0], c[1], c[2], b[0], b[1], b[2])
                and _inside_halfspace(z, y, x, rz, ry, rx, a[0], a[1], a[2], c[0], c[1], c[2])):
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _inside_halfspaces(z, y, x, halfspaces):
    """StarDist's point_in_halfspaces, in float64 (all-zero padding rows never exclude)."""
    for h in range(halfspaces.shape[0]):
        if halfspaces[h, 0] * z + halfspaces[h, 1] * y + halfspaces[h, 2] * x \
                + halfspaces[h, 3] > 0:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _render_polyhedra(labels, origin, centres, vertices, lo, hi, kernels, hulls, faces, ids):
    """Label the voxels of ``labels`` (first voxel at ``origin``) in the given polyhedron order."""
    for i in range(centres.shape[0]):
        for z in range(max(lo[i, 0], origin[0]), min(hi[i, 0], origin[0] + labels.shape[0])):
            for y in range(max(lo[i, 1], origin[1]), min(hi[i, 1], origin[1] + labels.shape[1])):
                for x in range(max(lo[i, 2], origin[2]),
                               min(hi[i, 2], origin[2] + labels.shape[2])):
                    local = (z - origin[0], y - origin[1], x - origin[2])
                    if labels[local] != 0:
                        continue  # an earlier (more probable) polyhedron owns the voxel
                    fz, fy, fx = np.float32(z), np.float32(y), np.float32(x)
                    if (_inside_halfspaces(fz, fy, fx, kernels[i])
                            or (_inside_halfspaces(fz, fy, fx, hulls[i])
                                and inside_star(fz, fy, fx, centres[i], vertices[i], faces))):
                        labels[local] = ids[i]


def kernel_halfspaces(vertices, faces):
    """Face half-spaces (N, n_faces, 4) built in float32 as StarDist's build_halfspace."""
    a, b, c = (vertices[:, faces[:, k]] for k in range(3))
    p, q = b - a, c - a
    normal = np.stack([-(p[..., 1] * q[..., 2] - p[..., 2] * q[..., 1]),
                       -(p[..., 2] * q[..., 0] - p[..., 0] * q[..., 2]),
                       -(p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0])], axis=-1)
    offset = -(a[..., 0] * normal[..., 0] + a[..., 1] * normal[..., 1]
               + a[..., 2] * normal[..., 2])
    return np.concatenate([normal, offset[..., None]], axis=-1).astype(np.float64)


def _hull_halfspaces(vertices):
    """Convex-hull half-spaces (N, max facets, 4), padded with all-zero rows."""
    # None: a flat polyhedron, which StarDist itself cannot render; the star test decides
    equations = [np.zeros((0, HALFSPACE_WIDTH)) if planes is None else planes
                 for planes in map(hull_equations, vertices)]
    hulls = np.zeros((len(equations), max(map(len, equations), default=0), HALFSPACE_WIDTH))
    for hull, planes in zip(hulls, equations):
        hull[:len(planes)] = planes
    return hulls


@numba.njit(cache=True, nogil=True)
def _render_polyhedra_fast(labels, origin, centres, inv_dist, lo, hi, ids, table):
    """As ``_render_polyhedra``, deciding each voxel with the cone-table inside test."""
    last = origin + np.array(labels.shape) - 1
    for i in range(centres.shape[0]):
        box_lo, box_hi = np.maximum(lo[i], origin), np.minimum(hi[i], last)
        mask = rasterise(table, inv_dist[i], centres[i], box_lo, box_hi)
        for z in range(mask.shape[0]):
            for y in range(mask.shape[1]):
                for x in range(mask.shape[2]):
                    local = (box_lo[0] - origin[0] + z, box_lo[1] - origin[1] + y,
                             box_lo[2] - origin[2] + x)
                    if mask[z, y, x] and labels[local] == 0:
                        labels[local] = ids[i]


def _render_stardist(labels, origin, dist, points, ids, geometry, image_shape):
    vertices = polyhedron_vertices(dist, points, geometry)
    lo, hi = bbox_of_vertices(vertices, image_shape)
    _render_polyhedra(labels, origin, np.asarray(points, np.float32), vertices, lo, hi,
                      kernel_halfspaces(vertices, geometry.faces), _hull_halfspaces(vertices),
                      geometry.faces, ids)


def _render_fast(labels, origin, dist, points, ids, geometry):
    polyhedra = prepare_polyhedra(dist, points, geometry)
    _render_polyhedra_fast(labels, origin, polyhedra.centres, polyhedra.inv_dist, polyhedra.lo,
                           polyhedra.hi, ids, cone_table(geometry, reach(polyhedra)))


def render_labels(dist, points, ids, geometry, box, image_shape, backend):
    """Labels of ``box`` exactly as StarDist renders the polyhedra into the whole image.

    Equals ``polyhedron_to_label(dist, points, rays, image_shape, prob=p, labels=ids)[box]``
    for any ``p`` that decreases strictly with ``ids``, as long as the polyhedra given include
    every one whose bounding box meets ``box``.

    Parameters
    ----------
    dist : ndarray (N, n_rays)
    points : ndarray (N, 3)
        Absolute centres (z, y, x); integers for the ``'fast'`` backend.
    ids : ndarray of int (N,)
        Labels; smaller ids are rendered first and win overlapping voxels.
    geometry : RayGeometry
    box : Box
        Region to render, inside the image.
    image_shape : tuple of 3 int
    backend : {'stardist', 'fast'}
        Which inside test decides the voxels (see the module docstring).

    Returns
    -------
    labels : ndarray of uint32, shape ``box.shape``
    """
    labels = np.zeros(box.shape, np.uint32)
    if len(ids) == 0:
        return labels
    order = np.argsort(ids, kind="stable")
    dist, points = np.asarray(dist)[order], np.asarray(points)[order]
    ids, origin = np.asarray(ids, np.uint32)[order], np.asarray(box.lo, np.int64)
    if backend == LABELING_BACKEND_FAST:
        _render_fast(labels, origin, dist, points, ids, geometry)
    else:
        _render_stardist(labels, origin, dist, points, ids, geometry, image_shape)
    return labels


# ---------------------------------------------------------------------------------------------
# chunk tasks


#: a labeling task renders neighbouring chunks together until they hold about this many voxels
#: (the default labeling.chunk_shape, 64x256x256, about a second of rendering): a task has a
#: fixed cost (scheduling, opening the survivor table, ~10 ms) that tiny chunks would pay over
#: and over.
MIN_TASK_VOXELS = 64 * 256 * 256


class ChunkTask(NamedTuple):
    """One label chunk: its flat index, its box and the survivor table rows meeting it."""
    index: int
    box: Box
    positions: np.ndarray


def chunk_tasks(bbox_lo, bbox_hi, grid):
    """Tasks of the chunks of ``grid`` that some survivor's bbox meets, in chunk order.

    Parameters
    ----------
    bbox_lo, bbox_hi : ndarray (K, 3)
        Render boxes of the survivors, in survivor table order.
    grid : Grid
        The chunk grid.

    Returns
    -------
    list of ChunkTask
        Positions within a task are increasing.
    """
    positions, chunks = grid.boxes_meeting(bbox_lo, bbox_hi)
    by_chunk = np.argsort(chunks, kind="stable")
    positions, chunks = positions[by_chunk], chunks[by_chunk]
    indices, starts = np.unique(chunks, return_index=True)
    return [ChunkTask(int(i), grid.box(int(i)), p)
            for i, p in zip(indices, np.split(positions, starts[1:]))]


def batch_chunks(grid):
    """The batch (one labeling task) of each chunk of ``grid``: blocks of neighbouring chunks
    that hold about :data:`MIN_TASK_VOXELS`, at least :data:`~.params.MIN_TASKS` of them."""
    return grid.batches(np.prod(grid.box_shape), MIN_TASK_VOXELS, MIN_TASKS)


class RenderedBatch(NamedTuple):
    """What a labeling task returns: the RenderedChunk of each chunk it rendered, and the
    first voxels of the OME-Zarr level-0 chunk files it wrote (None: it wrote none)."""
    chunks: list
    base_chunk_lo: np.ndarray | None


def render_chunks(params: SegmentParams, tasks, ome_zarr=None):
    """Task: render a batch of chunks (see :func:`render_chunk`), and write their OME-Zarr
    level 0 into ``ome_zarr`` (an :class:`~.outputs.OmeZarrTarget`; given for a whole batch).

    Returns
    -------
    RenderedBatch
    """
    # every file is synced at once before the task returns (a crash before that can leave a
    # chunk's statistics without its labels file, or either torn: chunk_done finds it and the
    # chunk is rendered again; the OME-Zarr marker is checked likewise)
    with synced_at_end():
        with SurvivorFile(params.survivor_path).positions_reader() as read_survivors:
            rendered = [render_chunk(params, task, read_survivors) for task in tasks]
        chunks = [chunk for chunk, _ in rendered]
        if ome_zarr is None:
            return RenderedBatch(chunks, None)
        # the bytes are at hand: copying them from the labels files was a stage of its own
        pieces = (piece for chunk, data in rendered for piece in split_stored(data, chunk.stored))
        return RenderedBatch(chunks, write_base_chunks(
            *ome_zarr, [task.index for task in tasks], pieces))


def render_chunk(params: SegmentParams, task: ChunkTask, read_survivors):
    """Render one chunk and checkpoint its compressed labels and statistics.

    The statistics file is written last: it marks the chunk as done. It also holds the
    chunk's previews and intensities (:mod:`.chunk_extras`).

    Parameters
    ----------
    params : SegmentParams
    task : ChunkTask
    read_survivors : callable
        ``read(positions)`` of :meth:`~stardist_hpc.io.survivors.SurvivorFile.positions_reader`.

    Returns
    -------
    RenderedChunk
        The chunk's extras, object ids and voxel counts, for the driver's ExtrasCollector.
    bytes
        Its compressed storage chunks (as in its labels file).
    """
    check_pinned(params.candidate_pin)   # the survivors were found in it
    started = time.perf_counter()
    dist, points, ids = read_survivors(task.positions)
    labels = render_labels(dist, points, ids, ray_geometry(params.rays_json), task.box,
                           params.image_shape, params.labeling_backend)
    stats = chunk_stats(labels, task.box.lo)
    extras = chunk_extras(params, task.box, labels, stats.ids, time.perf_counter() - started)
    files = chunk_files(params.chunk_dir, task.index)
    compressed, stored = compress_storage_chunks(labels, task.box.lo, params.storage_chunks)
    crc = NO_LABELS
    if len(stats.ids):
        write_bytes(files.labels, compressed)
        crc = zlib.crc32(compressed)
    save_record(files.stats, stats, extras, stored, ChunkIdentity(task.index, crc))
    return RenderedChunk(task.index, extras, stats, stored), compressed
