"""Render kept polyhedra into label chunks, voxel for voxel as StarDist renders the whole volume.

Two renderers decide which voxels a polyhedron covers: ``'stardist'``, the port of StarDist's
own below, and ``'fast'``, the O(1) cone-table test of :mod:`.star_geometry` (same voxels on
every polyhedron the tests and benchmarks render, several times faster).

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

import functools
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
from scipy.spatial import ConvexHull, QhullError

from .checkpoint import SurvivorFile, save_record, write_bytes
from .config import LABELING_BACKEND_FAST
from .star_geometry import cone_table, prepare_polyhedra, rasterise, reach
from .tiling import Box

#: zlib level of the chunks; h5py's default gzip level.
DEFLATE_LEVEL = 4
#: a half-space as stored: normal (z, y, x) and offset.
HALFSPACE_WIDTH = 4


class RayGeometry(NamedTuple):
    """Unit ray vectors and the triangle faces that connect their tips, as StarDist uses them."""
    vertices: np.ndarray     # float32 (n_rays, 3)
    faces: np.ndarray        # int32 (n_faces, 3)


@functools.lru_cache(maxsize=4)
def stardist_rays(rays_json):
    """StarDist's rays object described by ``rays_json`` (cached: tasks reuse it)."""
    from stardist.rays3d import rays_from_json
    return rays_from_json(json.loads(rays_json))


def ray_geometry(rays_json):
    """Ray vectors and faces of StarDist's rays description ``rays_json``."""
    rays = stardist_rays(rays_json)
    return RayGeometry(np.asarray(rays.vertices, np.float32), np.asarray(rays.faces, np.int32))


def polyhedron_vertices(dist, points, geometry):
    """Vertices (N, n_rays, 3) of polyhedra in absolute float32 coordinates, as StarDist's."""
    centres = np.asarray(points, np.float32)
    return centres[:, None, :] + np.asarray(dist, np.float32)[:, :, None] * geometry.vertices


def _bbox_of_vertices(vertices, image_shape):
    """Half-open voxel box StarDist renders each polyhedron in, clipped to the image."""
    lo = np.rint(vertices.min(axis=1)).astype(np.int64)
    hi = np.rint(vertices.max(axis=1)).astype(np.int64) + 1
    shape = np.asarray(image_shape)
    return np.clip(lo, 0, shape), np.clip(hi, 0, shape)


def polyhedron_bboxes(dist, points, geometry, image_shape):
    """Voxel boxes ``(lo, hi)`` (N, 3) that StarDist renders the polyhedra in, clipped."""
    return _bbox_of_vertices(polyhedron_vertices(dist, points, geometry), image_shape)


# ---------------------------------------------------------------------------------------------
# the per-voxel tests of StarDist's stardist3d_impl.cpp, in the same float32/float64 operations


@numba.njit(cache=True)
def _inside_halfspace(z, y, x, az, ay, ax, bz, by, bx, cz, cy, cx):
    """StarDist's inside_halfspace: sign of a float32 determinant."""
    m00, m01, m02 = bz - az, by - ay, bx - ax
    m10, m11, m12 = cz - az, cy - ay, cx - ax
    m20, m21, m22 = z - az, y - ay, x - ax
    det = (m00 * (m11 * m22 - m21 * m12) - m01 * (m10 * m22 - m12 * m20)
           + m02 * (m10 * m21 - m11 * m20))
    return det >= 0


@numba.njit(cache=True)
def _inside_star(z, y, x, centre, vertices, faces):
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


@numba.njit(cache=True)
def _inside_halfspaces(z, y, x, halfspaces):
    """StarDist's point_in_halfspaces, in float64 (all-zero padding rows never exclude)."""
    for h in range(halfspaces.shape[0]):
        if halfspaces[h, 0] * z + halfspaces[h, 1] * y + halfspaces[h, 2] * x \
                + halfspaces[h, 3] > 0:
            return False
    return True


@numba.njit(cache=True)
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
                                and _inside_star(fz, fy, fx, centres[i], vertices[i], faces))):
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
    equations = []
    for polyhedron in vertices:
        try:
            equations.append(ConvexHull(polyhedron.astype(np.float64)).equations)
        except QhullError:
            # a flat polyhedron: StarDist itself cannot render it; let the star test decide
            equations.append(np.zeros((0, HALFSPACE_WIDTH)))
    hulls = np.zeros((len(equations), max(map(len, equations), default=0), HALFSPACE_WIDTH))
    for hull, planes in zip(hulls, equations):
        hull[:len(planes)] = planes
    return hulls


@numba.njit(cache=True)
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
    lo, hi = _bbox_of_vertices(vertices, image_shape)
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
# per-chunk object statistics


class ChunkStats(NamedTuple):
    """Per object present in a chunk: voxel count, coordinate sums and voxel bbox [lo, hi)."""
    ids: np.ndarray          # uint32 (m,)
    voxel_count: np.ndarray  # int64 (m,)
    coord_sum: np.ndarray    # int64 (m, 3), absolute z, y, x
    bbox_lo: np.ndarray      # int64 (m, 3)
    bbox_hi: np.ndarray      # int64 (m, 3)


def chunk_stats(labels, origin):
    """Statistics of the objects in a label chunk whose first voxel is at ``origin``."""
    flat = np.flatnonzero(labels)
    ids, inverse, counts = np.unique(labels.ravel()[flat], return_inverse=True,
                                     return_counts=True)
    if len(ids) == 0:
        no_coords = np.zeros((0, 3), np.int64)
        return ChunkStats(np.zeros(0, np.uint32), np.zeros(0, np.int64), no_coords, no_coords,
                          no_coords)
    coords = np.stack(np.unravel_index(flat, labels.shape), axis=1) + np.asarray(origin)
    coords = coords[np.argsort(inverse, kind="stable")]
    starts = np.cumsum(counts) - counts
    return ChunkStats(ids=ids.astype(np.uint32), voxel_count=counts.astype(np.int64),
                      coord_sum=np.add.reduceat(coords, starts).astype(np.int64),
                      bbox_lo=np.minimum.reduceat(coords, starts),
                      bbox_hi=np.maximum.reduceat(coords, starts) + 1)


# ---------------------------------------------------------------------------------------------
# chunk tasks


@dataclass(frozen=True)
class RenderJob:
    """What every chunk task shares: the survivor table, rays, image and chunk geometry."""
    survivor_path: Path
    rays_json: str
    image_shape: tuple
    chunk_shape: tuple
    chunk_dir: Path
    backend: str


class ChunkTask(NamedTuple):
    """One label chunk: its flat index, its box and the survivor table rows meeting it."""
    index: int
    box: Box
    positions: np.ndarray


class ChunkFiles(NamedTuple):
    """Checkpoint files of a chunk: compressed labels (absent if all zero) and statistics."""
    labels: Path
    stats: Path


def chunk_files(chunk_dir, index):
    """Where the checkpoints of chunk ``index`` live."""
    return ChunkFiles(Path(chunk_dir) / f"{index}.bin", Path(chunk_dir) / f"{index}.npz")


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


def compress_chunk(labels, chunk_shape):
    """HDF5 deflate-filter bytes of a chunk, zero-padded to the full ``chunk_shape``."""
    padded = np.zeros(chunk_shape, np.uint32)
    padded[tuple(slice(0, s) for s in labels.shape)] = labels
    return zlib.compress(padded.tobytes(), DEFLATE_LEVEL)


def render_chunk(job: RenderJob, task: ChunkTask):
    """Render one chunk and checkpoint its compressed labels and statistics.

    The statistics file is written last: it marks the chunk as done.

    Returns
    -------
    int
        The chunk index.
    """
    dist, points, ids = SurvivorFile(job.survivor_path).read_positions(task.positions)
    labels = render_labels(dist, points, ids, ray_geometry(job.rays_json), task.box,
                           job.image_shape, job.backend)
    stats = chunk_stats(labels, task.box.lo)
    files = chunk_files(job.chunk_dir, task.index)
    if len(stats.ids):
        write_bytes(files.labels, compress_chunk(labels, job.chunk_shape))
    save_record(files.stats, stats)
    return task.index
