"""Which voxels lie inside a star-convex polyhedron, in O(1) per voxel.

A point lies inside a star-convex polyhedron iff, in the face cone (centre, ray k1, k2, k3)
that holds its direction, its coordinates ``(a, b, c)`` in the three ray directions satisfy
``a / d_k1 + b / d_k2 + c / d_k3 <= 1``. Cone and coordinates depend only on the offset of the
voxel from the centre; with integer centres (candidate points are voxel coordinates) a
:class:`ConeTable` stores them once per offset for all polyhedra that share the rays, and the
test costs three multiplications. The fast NMS (:mod:`.nms_fast`) counts overlaps with it.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numba
import numpy as np

#: offsets held by a cone table at most; farther offsets are located by searching the faces.
MAX_TABLE_OFFSETS = 2 ** 21
#: half-sizes of cached cone tables are rounded up to a multiple of this, so that tiles with
#: slightly different candidate extents share one table.
TABLE_HALF_STEP = 8
#: a ray coordinate this far above 0 (relative to the offset) is inside a cone beyond rounding
CONE_MARGIN = 1e-9
#: the smallest ray length used in ``1 / d`` (StarDist's distances are positive; this keeps a
#: zero distance from turning ``0 / d`` into NaN).
MIN_DIST = 1e-6


class ConeTable(NamedTuple):
    """Face cone and ray coordinates of every voxel offset within ``half`` of a centre."""
    face: np.ndarray      # int32 (2hz+1, 2hy+1, 2hx+1)
    coords: np.ndarray    # float64 (2hz+1, 2hy+1, 2hx+1, 3)
    half: np.ndarray      # int64 (3,)
    faces: np.ndarray     # int32 (n_faces, 3): ray indices of each face
    inverse: np.ndarray   # float64 (n_faces, 3, 3): ray coordinates from an offset, per face


# ---------------------------------------------------------------------------------------------
# geometry of the rays


def face_inverses(vertices, faces):
    """Per face, the matrix mapping an offset to its coordinates in the face's three rays.

    Parameters
    ----------
    vertices : ndarray (n_rays, 3)
        Ray directions (StarDist's ``rays.vertices``).
    faces : ndarray of int (n_faces, 3)

    Returns
    -------
    ndarray of float64 (n_faces, 3, 3)
    """
    rays = np.asarray(vertices, np.float64)[np.asarray(faces)]   # (n_faces, ray, zyx)
    return np.linalg.inv(np.transpose(rays, (0, 2, 1)))


@numba.njit(cache=True, nogil=True)
def _coords_in_face(inverse, f, oz, oy, ox, out):
    for k in range(3):
        out[k] = inverse[f, k, 0] * oz + inverse[f, k, 1] * oy + inverse[f, k, 2] * ox
    return min(out[0], min(out[1], out[2]))


@numba.njit(cache=True, nogil=True)
def _locate(inverse, oz, oy, ox, hint, out):
    """Face whose cone holds the offset, and its ray coordinates (written to ``out``).

    The face whose smallest coordinate is largest wins: the cone that holds the offset, robust
    to rounding on shared edges, and the same whatever the table's size. The ``hint`` face (a
    neighbouring offset's) is taken without the search when the offset lies clearly inside its
    cone (beyond rounding), where no other face can win.
    """
    margin = CONE_MARGIN * (abs(oz) + abs(oy) + abs(ox))
    if hint >= 0 and _coords_in_face(inverse, hint, oz, oy, ox, out) > margin:
        return hint
    best, best_min = 0, -np.inf
    for f in range(inverse.shape[0]):
        low = _coords_in_face(inverse, f, oz, oy, ox, out)
        if low > best_min:
            best, best_min = f, low
    _coords_in_face(inverse, best, oz, oy, ox, out)
    return best


@numba.njit(cache=True, nogil=True)
def _fill_table(inverse, half, face, coords):
    out = np.empty(3)
    for z in range(face.shape[0]):
        for y in range(face.shape[1]):
            hint = -1
            for x in range(face.shape[2]):
                oz, oy, ox = z - half[0], y - half[1], x - half[2]
                if oz == 0 and oy == 0 and ox == 0:
                    face[z, y, x] = 0   # the centre: coordinates (0, 0, 0), always inside
                    coords[z, y, x, :] = 0.0
                    continue
                hint = _locate(inverse, oz, oy, ox, hint, out)
                face[z, y, x] = hint
                coords[z, y, x, :] = out


def _table_half(extent):
    """Half-sizes of a table covering ``extent``, rounded up and capped in size."""
    half = np.array([TABLE_HALF_STEP * math.ceil((float(e) + 1) / TABLE_HALF_STEP)
                     for e in extent])
    while np.prod(2 * half + 1) > MAX_TABLE_OFFSETS:
        half = np.maximum(half * 3 // 4, 1)
    return tuple(int(h) for h in half)


@functools.lru_cache(maxsize=4)
def _cone_table(vertices_bytes, faces_bytes, n_rays, half):
    vertices = np.frombuffer(vertices_bytes, np.float32).reshape(n_rays, 3)
    faces = np.frombuffer(faces_bytes, np.int32).reshape(-1, 3)
    inverse = face_inverses(vertices, faces)
    shape = tuple(2 * h + 1 for h in half)
    face, coords = np.empty(shape, np.int32), np.empty(shape + (3,))
    _fill_table(inverse, np.asarray(half, np.int64), face, coords)
    return ConeTable(face, coords, np.asarray(half, np.int64), faces.copy(), inverse)


def cone_table(geometry, extent):
    """The (cached) cone table of ``geometry`` for offsets up to ``extent`` voxels.

    Parameters
    ----------
    geometry : render.RayGeometry
    extent : sequence of 3 float
        Largest offset along z, y, x from a centre that the table should hold; larger offsets
        still work, at the cost of a search over the faces.

    Returns
    -------
    ConeTable
    """
    vertices = np.ascontiguousarray(geometry.vertices, np.float32)
    faces = np.ascontiguousarray(geometry.faces, np.int32)
    return _cone_table(vertices.tobytes(), faces.tobytes(), len(vertices), _table_half(extent))


@numba.njit(cache=True, nogil=True)
def _inside_cone(a, b, c, f, faces, inv_dist):
    """The inside test from ray coordinates ``(a, b, c)`` in face ``f``."""
    return a * inv_dist[faces[f, 0]] + b * inv_dist[faces[f, 1]] + c * inv_dist[faces[f, 2]] \
        <= 1.0


@numba.njit(cache=True, nogil=True)
def inside_held(face, coords, faces, inv_dist, tz, ty, tx):
    """:func:`inside` for an offset the table holds, given by its table index (offset + half).

    It takes the table's arrays rather than the table and never searches the faces, so that
    compiled voxel loops inline it: a per-voxel call of :func:`inside` costs ~20x the test.
    """
    return _inside_cone(coords[tz, ty, tx, 0], coords[tz, ty, tx, 1], coords[tz, ty, tx, 2],
                        face[tz, ty, tx], faces, inv_dist)


@numba.njit(cache=True, nogil=True)
def inside(table, inv_dist, oz, oy, ox, scratch):
    """Whether the offset (oz, oy, ox) from its centre lies inside a polyhedron.

    Parameters
    ----------
    table : ConeTable
    inv_dist : ndarray (n_rays,)
        The polyhedron's inverse ray lengths.
    oz, oy, ox : int
    scratch : ndarray (3,)
        Work space for offsets beyond the table.
    """
    face, coords, half, faces, inverse = table
    if abs(oz) <= half[0] and abs(oy) <= half[1] and abs(ox) <= half[2]:
        return inside_held(face, coords, faces, inv_dist, oz + half[0], oy + half[1],
                           ox + half[2])
    f = _locate(inverse, oz, oy, ox, -1, scratch)
    return _inside_cone(scratch[0], scratch[1], scratch[2], f, faces, inv_dist)


@numba.njit(cache=True, nogil=True)
def table_holds(table, centre, lo, hi):
    """Whether ``table`` holds the offsets from ``centre`` of every voxel in [lo, hi]."""
    for k in range(3):
        if lo[k] - centre[k] < -table.half[k] or hi[k] - centre[k] > table.half[k]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def rasterise(table, inv_dist, centre, lo, hi):
    """Which voxels of the box [lo, hi] (inclusive, absolute) lie inside a polyhedron.

    Parameters
    ----------
    table : ConeTable
    inv_dist : ndarray (n_rays,)
        The polyhedron's inverse ray lengths.
    centre, lo, hi : ndarray of int (3,)

    Returns
    -------
    ndarray of bool, shape ``hi - lo + 1``
    """
    mask = np.zeros((max(hi[0] - lo[0] + 1, 0), max(hi[1] - lo[1] + 1, 0),
                     max(hi[2] - lo[2] + 1, 0)), np.bool_)
    if table_holds(table, centre, lo, hi):
        face, coords, half, faces, _ = table
        for z in range(mask.shape[0]):
            tz = lo[0] + z - centre[0] + half[0]
            for y in range(mask.shape[1]):
                ty = lo[1] + y - centre[1] + half[1]
                for x in range(mask.shape[2]):
                    mask[z, y, x] = inside_held(face, coords, faces, inv_dist, tz, ty,
                                                lo[2] + x - centre[2] + half[2])
        return mask
    scratch = np.empty(3)
    for z in range(mask.shape[0]):
        for y in range(mask.shape[1]):
            for x in range(mask.shape[2]):
                mask[z, y, x] = inside(table, inv_dist, lo[0] + z - centre[0],
                                       lo[1] + y - centre[1], lo[2] + x - centre[2], scratch)
    return mask


# ---------------------------------------------------------------------------------------------
# what the suppression loop needs per candidate


class Polyhedra(NamedTuple):
    """Candidates as the suppression loop sees them, in rank order."""
    centres: np.ndarray    # int64 (N, 3)
    inv_dist: np.ndarray   # float64 (N, n_rays): 1 / ray length
    volumes: np.ndarray    # float32 (N,): of the continuous polyhedra, as StarDist computes them
    lo: np.ndarray         # int64 (N, 3): StarDist's inclusive voxel bounding box
    hi: np.ndarray         # int64 (N, 3)


@numba.njit(cache=True, nogil=True)
def _tetrahedron_volume(a, b, c):
    """StarDist's tetrahedron_volume(0, a, b, c) in float32: rows b - a, c - a, 0 - a."""
    m00, m01, m02 = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    m10, m11, m12 = c[0] - a[0], c[1] - a[1], c[2] - a[2]
    m20, m21, m22 = -a[0], -a[1], -a[2]
    det = (m00 * (m11 * m22 - m21 * m12) - m01 * (m10 * m22 - m12 * m20)
           + m02 * (m10 * m21 - m11 * m20))
    return det / np.float32(6)


@numba.njit(cache=True, nogil=True)
def _measure_polyhedra(dist, centres, vertices, faces):
    """Inverse ray lengths, volumes and inclusive voxel boxes, in StarDist's float32 steps."""
    n, n_rays = dist.shape
    inv_dist, volumes = np.empty((n, n_rays)), np.empty(n, np.float32)
    lo, hi = np.empty((n, 3), np.int64), np.empty((n, 3), np.int64)
    tips = np.empty((n_rays, 3), np.float32)
    for i in range(n):
        for k in range(3):
            lo[i, k], hi[i, k] = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        for r in range(n_rays):
            inv_dist[i, r] = 1.0 / max(np.float64(dist[i, r]), MIN_DIST)
            for k in range(3):
                tips[r, k] = dist[i, r] * vertices[r, k]
                # the vertex, rounded half to even as StarDist's lrint
                at = np.int64(np.rint(np.float32(centres[i, k]) + tips[r, k]))
                lo[i, k], hi[i, k] = min(lo[i, k], at), max(hi[i, k], at)
        total = np.float32(0)
        for f in range(faces.shape[0]):
            total += _tetrahedron_volume(tips[faces[f, 0]], tips[faces[f, 1]], tips[faces[f, 2]])
        volumes[i] = total
    return inv_dist, volumes, lo, hi


def reach(polyhedra):
    """Largest distance (z, y, x) from a centre to a face of its voxel box, over all polyhedra:
    the offsets a cone table for them should hold."""
    return np.maximum((polyhedra.centres - polyhedra.lo).max(axis=0),
                      (polyhedra.hi - polyhedra.centres).max(axis=0))


def _integer_centres(points):
    centres = np.asarray(points)
    if not np.array_equal(centres, np.round(centres)):
        raise ValueError("the fast NMS needs integer candidate points (voxel coordinates)")
    return centres.astype(np.int64).reshape(-1, 3)


def prepare_polyhedra(dist, points, geometry):
    """The :class:`Polyhedra` of candidates with rays ``geometry``."""
    centres = _integer_centres(points)
    inv_dist, volumes, lo, hi = _measure_polyhedra(
        np.ascontiguousarray(dist, np.float32), centres,
        np.ascontiguousarray(geometry.vertices, np.float32),
        np.ascontiguousarray(geometry.faces, np.int64))
    return Polyhedra(centres, inv_dist, volumes, lo, hi)
