"""A fast NMS with StarDist's suppression rule, decided by counting voxels.

StarDist suppresses candidate ``j`` in favour of a kept, higher ranked ``i`` when their overlap
exceeds ``thresh * min(volume_i, volume_j)`` (volumes of the continuous polyhedra). It bounds
the overlap with spheres and Qhull intersections of kernels (a lower bound) and convex hulls (an
upper bound) and, when those do not decide, counts the voxels both polyhedra render; a Qhull
intersection costs milliseconds. This backend counts voxels first, with the O(1) inside test of
:mod:`.star_geometry`:

* each kept polyhedron is rasterised once (lazily, when a neighbour first needs it) together
  with a summed-volume table, which bounds its voxels in any box in O(1);
* a pair is decided by cheap bounds first (box volumes, the kept polyhedron's voxels in the
  shared box), then by counting, stopping as soon as the count decides either way;
* only a count within the *band* around the limit (see :func:`_band`), where the count's
  discretisation error could make StarDist's continuous bounds decide otherwise, is handed to
  StarDist's own checks: its voxel count where ours lies within ``RECOUNT_VOXELS`` of the limit,
  then one intersection check (the kernels for a count at or below the limit, the hulls
  above it), its volume clipped in numba without the GIL (:mod:`..geometry.clipping`; the
  hulls' equations come from Qhull), by Qhull itself where the clipping is unsure.

A count differs from the continuous overlap by about the voxels its surface cuts, so relatively
more on small polyhedra: on ones of ~100 voxels (4-7 voxels across, z half that), counts
differed from StarDist's Qhull bounds by up to 11% on the very pairs those bounds decide.

Every decision depends on the pair alone, so tiles see the same decisions as the whole volume.
Candidate centres must be integer voxel coordinates (as in the candidate file).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numba
import numpy as np
from scipy.spatial import HalfspaceIntersection, QhullError

from ..geometry.clipping import OUTSIDE, UNSURE, clipped_volume
from ..geometry.cone_table import (
    cone_table,
    inside_held,
    prepare_polyhedra,
    rasterise,
    reach,
    table_holds,
)
from ..geometry.hulls import hull_equations
from .render import inside_star

#: StarDist's guard against dividing by a zero volume (``A_min + 1e-10``).
VOLUME_EPS = 1e-10
#: voxel counts within a band around the limit are borderline: the count's discretisation error
#: could flip the decision, so StarDist's own checks decide them. The band is a fraction of the
#: limit: at least BORDERLINE, and BAND_SCALE over the radius (voxels) of a ball of the smaller
#: polyhedron's volume (the relative error of a count falls as the polyhedron grows): 17% on the
#: polyhedra of ~200 voxels that HPC-step benchmarks use, about twice the errors seen there.
BORDERLINE = 0.05
BAND_SCALE = 0.6
#: a borderline count this close to the limit is redone with StarDist's own inside test: the
#: cone-table test rounds differently on voxels within ~1e-6 of a face.
RECOUNT_VOXELS = 2
#: relative (and absolute, in voxels) margin of the bounding ball of a polyhedron in the
#: borderline recount: far above float32 rounding (~1e-7), so the ball surely holds it.
BALL_MARGIN = 1e-3
#: StarDist's value for a convex-hull intersection that Qhull fails on (never keeps).
HULL_ERROR = 1e10
#: indices of the pair counters the suppression loop keeps (see :class:`PairCounts`).
TESTED, BY_BOXES, BY_BOUNDS, BY_COUNTING, BY_QHULL, VOXELS, DECIDED = range(7)


class PairCounts(NamedTuple):
    """What the suppression loop did: pairs (kept ``i``, later ``j``) whose boxes meet."""
    tested: int        # pairs looked at
    by_boxes: int      # kept on the volume of the shared box alone
    by_bounds: int     # decided by voxel bounds (summed-volume tables), without counting
    by_counting: int   # decided by counting voxels
    by_qhull: int      # borderline counts, decided by StarDist's Qhull check
    voxels: int        # inside tests while counting
    decided: int       # candidates whose fate was decided (all of them in a full run)

    @property
    def voxels_per_counted_pair(self):
        """Inside tests per pair that was counted (0 when none was)."""
        counted = self.by_counting + self.by_qhull
        return self.voxels / counted if counted else 0.0


class NeighbourGrid(NamedTuple):
    """Candidates bucketed by centre in cells of ``cell`` voxels (CSR layout)."""
    origin: np.ndarray     # int64 (3,): the smallest centre coordinates, a corner of cell 0
    cell: np.ndarray       # int64 (3,)
    shape: np.ndarray      # int64 (3,): cells per axis
    starts: np.ndarray     # int64 (n_cells + 1,)
    members: np.ndarray    # int64 (N,): candidate indices, increasing within a cell
    reach: np.ndarray      # int64 (3,): largest distance from a centre to its bbox faces


def neighbour_grid(polyhedra):
    """Bucket the candidates so that those whose boxes may meet a box are found quickly."""
    centres, largest_reach = polyhedra.centres, reach(polyhedra)
    cell = 2 * np.maximum(largest_reach, 0) + 1
    origin = centres.min(axis=0)
    index = (centres - origin) // cell
    shape = index.max(axis=0) + 1
    flat = np.ravel_multi_index(tuple(index.T), tuple(shape))
    members = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[members], np.arange(int(np.prod(shape)) + 1))
    return NeighbourGrid(origin, cell, shape.astype(np.int64), starts.astype(np.int64),
                         members.astype(np.int64), largest_reach.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# the suppression loop


@numba.njit(cache=True, nogil=True)
def _rasterise(i, centres, inv_dist, lo, hi, table):
    """Voxels of polyhedron ``i`` in its box, and their summed-volume table."""
    mask = rasterise(table, inv_dist[i], centres[i], lo[i], hi[i])
    nz, ny, nx = mask.shape
    summed = np.zeros((nz + 1, ny + 1, nx + 1), np.int32)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                summed[z + 1, y + 1, x + 1] = (
                    mask[z, y, x] + summed[z, y + 1, x + 1] + summed[z + 1, y, x + 1]
                    + summed[z + 1, y + 1, x] - summed[z, y, x + 1] - summed[z, y + 1, x]
                    - summed[z + 1, y, x] + summed[z, y, x])
    return mask, summed


@numba.njit(cache=True, nogil=True)
def _voxels_in_box(summed, z0, y0, x0, z1, y1, x1):
    """Rasterised voxels in the half-open box [z0, z1) x [y0, y1) x [x0, x1) of the mask."""
    return (summed[z1, y1, x1] - summed[z0, y1, x1] - summed[z1, y0, x1] - summed[z1, y1, x0]
            + summed[z0, y0, x1] + summed[z0, y1, x0] + summed[z1, y0, x0] - summed[z0, y0, x0])


@numba.njit(cache=True, nogil=True)
def _count_overlap(mask, origin, box_lo, box_hi, upper, low, high, centre, inv_dist, table):
    """Voxels of ``mask`` in the box that lie inside the polyhedron, counted until it decides.

    ``upper`` is the number of mask voxels in the box. Counting stops once the count exceeds
    ``high`` (returning it) or can no longer exceed ``low`` (returning that bound); a result
    in ``(low, high]`` is the exact count. Also returns the inside tests made.
    """
    if not table_holds(table, centre, box_lo, box_hi):
        return _count_beyond_table(mask, origin, box_lo, box_hi, centre, inv_dist, table)
    face, coords, half, faces, _ = table
    count, remaining = 0, upper
    for z in range(box_lo[0], box_hi[0] + 1):
        tz = z - centre[0] + half[0]
        for y in range(box_lo[1], box_hi[1] + 1):
            ty = y - centre[1] + half[1]
            for x in range(box_lo[2], box_hi[2] + 1):
                if not mask[z - origin[0], y - origin[1], x - origin[2]]:
                    continue
                remaining -= 1
                if inside_held(face, coords, faces, inv_dist, tz, ty, x - centre[2] + half[2]):
                    count += 1
                    if count > high:
                        return count, upper - remaining
                elif count + remaining <= low:
                    return count + remaining, upper - remaining
    return count, upper


@numba.njit(cache=True, nogil=True)
def _count_beyond_table(mask, origin, box_lo, box_hi, centre, inv_dist, table):
    """The exact count of :func:`_count_overlap` for a box the cone table does not hold.

    Kept apart because a voxel loop that may search the faces cannot be compiled as tightly.
    """
    inner = rasterise(table, inv_dist, centre, box_lo, box_hi)
    count = 0
    for z in range(inner.shape[0]):
        for y in range(inner.shape[1]):
            for x in range(inner.shape[2]):
                count += inner[z, y, x] and mask[box_lo[0] + z - origin[0],
                                                 box_lo[1] + y - origin[1],
                                                 box_lo[2] + x - origin[2]]
    return count, inner.size


def _intersection_volume(halfspaces, interior, on_error):
    """Volume of the intersection of half-spaces ``a.x + b <= 0`` (Qhull), as StarDist computes
    it, or ``on_error`` where Qhull fails (as StarDist's)."""
    try:
        polytope = HalfspaceIntersection(halfspaces, interior)
    except (QhullError, ValueError):
        return on_error
    return _polytope_volume(polytope.intersections, polytope.dual_facets, halfspaces, interior)


def _polytope_volume(corners, corner_planes, halfspaces, interior):
    """Volume of a convex polytope from its corners and the planes through each corner.

    Faster than a convex hull of the corners, which Qhull slows down on the many corners where
    more than three planes meet.
    """
    counts = np.fromiter(map(len, corner_planes), np.int64, len(corner_planes))
    planes = np.fromiter(itertools.chain.from_iterable(corner_planes), np.int64, counts.sum())
    return _fan_volume(corners, np.repeat(np.arange(len(corners)), counts), planes,
                       halfspaces[:, :3], interior)


@numba.njit(cache=True, nogil=True)
def _fan_volume(corners, corner_of, plane_of, normals, interior):
    """Sum of the pyramids from ``interior`` over the faces, each fanned from its centre with
    its corners sorted by angle (``corner_of[k]`` lies on plane ``plane_of[k]``)."""
    by_plane = np.argsort(plane_of, kind="mergesort")
    volume, start = 0.0, 0
    while start < len(by_plane):
        plane = plane_of[by_plane[start]]
        stop = start
        while stop < len(by_plane) and plane_of[by_plane[stop]] == plane:
            stop += 1
        points = corners[corner_of[by_plane[start:stop]]]
        centre = np.zeros(3)
        for p in points:
            centre += p
        centre /= len(points)
        # in-plane axes u, w of the face, to order its corners by angle around its centre
        n = normals[plane]
        helper = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(n, helper)
        w = np.cross(n, u)
        angle = np.empty(len(points))
        for k in range(len(points)):
            angle[k] = np.arctan2(np.dot(points[k] - centre, w), np.dot(points[k] - centre, u))
        ring = points[np.argsort(angle)]
        a = centre - interior
        for k in range(len(ring)):
            b, c = ring[k] - interior, ring[(k + 1) % len(ring)] - interior
            volume += abs(a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                          + a[2] * (b[0] * c[1] - b[1] * c[0]))
        start = stop
    return volume / 6


@numba.njit(cache=True, nogil=True)
def _stardist_exceeds(overlap, a_min, thresh):
    """StarDist's test ``overlap / (A_min + 1e-10) > thresh``, in its float32 steps."""
    return np.float32(np.float32(overlap) / (np.float64(a_min) + VOLUME_EPS)) > thresh


@numba.njit(cache=True, nogil=True)
def _borderline_suppresses(i, j, dist, centres, vertices, faces, a_min, thresh, counted_above):
    """StarDist's decision on a pair whose voxel count is borderline, from one intersection check.

    StarDist suppresses when the kernels' intersection (a lower bound of the overlap) exceeds
    the threshold, keeps when the convex hulls' intersection (an upper bound) does not, and
    counts voxels otherwise. So a count at or below the limit stands unless the kernels
    suppress, and a count above it stands unless the hulls keep: one check decides. Its volume
    is clipped in numba without the GIL (the hulls' equations come from Qhull), by Qhull
    where the clipping is unsure.
    """
    tips = _pair_tips(i, j, dist, centres, vertices)
    interior = (centres[i].astype(np.float64) + centres[j].astype(np.float64)) / 2
    lo, hi = np.empty(3), np.empty(3)
    for k in range(3):
        lo[k] = max(tips[0, :, k].min(), tips[1, :, k].min())
        hi[k] = max(min(tips[0, :, k].max(), tips[1, :, k].max()), lo[k])
    if counted_above:
        planes, on_error = _hull_planes(tips), HULL_ERROR
        if len(planes) == 0:
            return True   # StarDist's error value: an overlap too large to keep on
    else:
        planes, on_error = _kernel_planes(tips, faces), 0.0
    volume = clipped_volume(planes, interior, lo, hi)
    if volume == UNSURE:
        volume = _qhull_volume(planes, interior, on_error)
    elif volume == OUTSIDE:
        volume = on_error
    return _stardist_exceeds(volume, a_min, thresh)


# the two functions below take the GIL in their object-mode blocks (Qhull): without nogil, as
# numba warns about a nogil flag on a function with such a block
@numba.njit(cache=True)
def _hull_planes(tips):
    with numba.objmode(planes="float64[:, :]"):
        planes = _hull_equations(tips)
    return planes


@numba.njit(cache=True)
def _qhull_volume(planes, interior, on_error):
    with numba.objmode(volume="float64"):
        volume = _intersection_volume(planes, interior, on_error)
    return volume


def _hull_equations(tips):
    """The convex hulls' half-spaces of both polyhedra (Qhull), none where Qhull fails."""
    hulls = [hull_equations(t) for t in tips]
    if any(hull is None for hull in hulls):
        return np.zeros((0, 4))
    return np.concatenate(hulls)


@numba.njit(cache=True, nogil=True)
def _pair_tips(i, j, dist, centres, vertices):
    """The float32 ray tips (2, n_rays, 3) of ``i`` and ``j``, as StarDist computes them."""
    tips = np.empty((2, dist.shape[1], 3), np.float32)
    for side, k in enumerate((i, j)):
        for r in range(dist.shape[1]):
            for axis in range(3):
                tips[side, r, axis] = np.float32(centres[k, axis]) + dist[k, r] * vertices[r, axis]
    return tips


@numba.njit(cache=True, nogil=True)
def _kernel_planes(tips, faces):
    """:func:`.render.kernel_halfspaces` of both polyhedra (2 * n_faces, 4), in the same float32
    steps, so that both give the same planes to the last bit."""
    planes = np.empty((2 * len(faces), 4))
    for side in range(2):
        t = tips[side]
        for f in range(len(faces)):
            a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
            p0, p1, p2 = t[b, 0] - t[a, 0], t[b, 1] - t[a, 1], t[b, 2] - t[a, 2]
            q0, q1, q2 = t[c, 0] - t[a, 0], t[c, 1] - t[a, 1], t[c, 2] - t[a, 2]
            n0 = -(p1 * q2 - p2 * q1)
            n1 = -(p2 * q0 - p0 * q2)
            n2 = -(p0 * q1 - p1 * q0)
            row = side * len(faces) + f
            planes[row, 0], planes[row, 1], planes[row, 2] = n0, n1, n2
            planes[row, 3] = -(t[a, 0] * n0 + t[a, 1] * n1 + t[a, 2] * n2)
    return planes


@numba.njit(cache=True, nogil=True)
def _boxes_keep(i, j, lo, hi, limit, box_lo, box_hi):
    """Whether the boxes alone keep ``j``; fills the shared voxel box [box_lo, box_hi]."""
    stardist_box, voxel_box = 1, 1
    for k in range(3):
        box_lo[k], box_hi[k] = max(lo[i, k], lo[j, k]), min(hi[i, k], hi[j, k])
        # StarDist's pretest measures box overlap without the +1 of inclusive voxel bounds
        stardist_box *= max(box_hi[k] - box_lo[k], 0)
        voxel_box *= max(box_hi[k] - box_lo[k] + 1, 0)
    return stardist_box <= limit or voxel_box <= (1 - BORDERLINE) * limit


@numba.njit(cache=True, nogil=True)
def _suppresses(i, j, mask, summed, polyhedra, dist, vertices, table, thresh, a_min, limit,
                box_lo, box_hi, counters):
    """Whether kept ``i`` suppresses ``j``, whose boxes meet (``mask``: i's voxels), with
    ``limit`` the overlap allowed by ``thresh`` and the smaller volume ``a_min``; counts how
    the pair was decided in ``counters``."""
    centres, inv_dist, volumes, lo, hi = polyhedra
    band = _band(a_min) * limit
    low, high = limit - band, limit + band
    upper = _voxels_in_box(summed, box_lo[0] - lo[i, 0], box_lo[1] - lo[i, 1],
                           box_lo[2] - lo[i, 2], box_hi[0] - lo[i, 0] + 1,
                           box_hi[1] - lo[i, 1] + 1, box_hi[2] - lo[i, 2] + 1)
    if upper <= low:
        counters[BY_BOUNDS] += 1
        return False
    count, tests = _count_overlap(mask, lo[i], box_lo, box_hi, upper, low, high, centres[j],
                                  inv_dist[j], table)
    counters[VOXELS] += tests
    if count <= low or count > high:
        counters[BY_COUNTING] += 1
        return count > high
    counters[BY_QHULL] += 1
    if abs(count - limit) <= RECOUNT_VOXELS:
        count = _stardist_count(i, j, dist, centres, vertices, table.faces, box_lo, box_hi)
    return _borderline_suppresses(i, j, dist, centres, vertices, table.faces, a_min, thresh,
                                  _stardist_exceeds(count, a_min, thresh))


@numba.njit(cache=True, nogil=True)
def _band(a_min):
    """Half-width of the borderline band, as a fraction of the limit (see ``BAND_SCALE``)."""
    radius = (3 * max(np.float64(a_min), VOLUME_EPS) / (4 * np.pi)) ** (1 / 3)
    return max(BORDERLINE, BAND_SCALE / radius)


@numba.njit(cache=True, nogil=True)
def _stardist_count(i, j, dist, centres, vertices, faces, box_lo, box_hi):
    """StarDist's voxel count of the overlap of ``i`` and ``j``: the voxels of the shared box
    inside both by its own float32 test, on its float32 vertices. A voxel beyond either
    polyhedron's bounding ball (grown by ``BALL_MARGIN``) is outside it without the test,
    which otherwise tries every face."""
    tips = _pair_tips(i, j, dist, centres, vertices)
    centre_i, centre_j = centres[i].astype(np.float32), centres[j].astype(np.float32)
    reach_i, reach_j = _ball_reach(tips[0], centres[i]), _ball_reach(tips[1], centres[j])
    count = 0
    for z in range(box_lo[0], box_hi[0] + 1):
        for y in range(box_lo[1], box_hi[1] + 1):
            for x in range(box_lo[2], box_hi[2] + 1):
                if (_squared_distance(z, y, x, centres[i]) > reach_i
                        or _squared_distance(z, y, x, centres[j]) > reach_j):
                    continue
                fz, fy, fx = np.float32(z), np.float32(y), np.float32(x)
                count += (inside_star(fz, fy, fx, centre_i, tips[0], faces)
                          and inside_star(fz, fy, fx, centre_j, tips[1], faces))
    return count


@numba.njit(cache=True, nogil=True)
def _ball_reach(tips, centre):
    """Squared radius of a ball around ``centre`` that holds the polyhedron of ``tips``: its
    farthest tip, grown by ``BALL_MARGIN`` against float32 rounding."""
    farthest = 0.0
    for r in range(len(tips)):
        farthest = max(farthest, _squared_distance(tips[r, 0], tips[r, 1], tips[r, 2], centre))
    return (np.sqrt(farthest) * (1 + BALL_MARGIN) + BALL_MARGIN) ** 2


@numba.njit(cache=True, nogil=True)
def _squared_distance(z, y, x, centre):
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2


@numba.njit(cache=True, nogil=True)
def _cell_range(i, k, lo, hi, grid):
    """First and last cell along axis ``k`` of ``grid`` that may hold a candidate whose box
    meets the box of ``i``."""
    origin, cell, shape, _, _, largest_reach = grid
    # a neighbour's centre lies within ``largest_reach`` of its box, which must meet i's
    return (max((lo[i, k] - largest_reach[k] - origin[k]) // cell[k], 0),
            min((hi[i, k] + largest_reach[k] - origin[k]) // cell[k], shape[k] - 1))


@numba.njit(cache=True, nogil=True)
def _neighbours(i, lo, hi, grid, found):
    """Write every candidate whose box may meet the box of ``i`` (``i`` among them) to
    ``found`` (room for all candidates), cell by cell; return how many there are."""
    _, _, shape, starts, members, _ = grid
    (z0, z1), (y0, y1), (x0, x1) = (_cell_range(i, 0, lo, hi, grid),
                                    _cell_range(i, 1, lo, hi, grid),
                                    _cell_range(i, 2, lo, hi, grid))
    n = 0
    for cz in range(z0, z1 + 1):
        for cy in range(y0, y1 + 1):
            for cx in range(x0, x1 + 1):
                c = (cz * shape[1] + cy) * shape[2] + cx
                for m in range(starts[c], starts[c + 1]):
                    found[n] = members[m]
                    n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _pair_limit(i, j, volumes, thresh):
    """The smaller volume of the pair and the overlap StarDist's rule allows it."""
    a_min = min(volumes[i], volumes[j])
    return a_min, thresh * (a_min + VOLUME_EPS)


@numba.njit(cache=True, nogil=True)
def _suppress_loop(polyhedra, dist, vertices, grid, table, thresh, counters):
    centres, inv_dist, volumes, lo, hi = polyhedra
    suppressed = np.zeros(centres.shape[0], np.bool_)
    box_lo, box_hi = np.empty(3, np.int64), np.empty(3, np.int64)
    found = np.empty(centres.shape[0], np.int64)
    counters[DECIDED] += centres.shape[0]
    for i in range(centres.shape[0]):
        if suppressed[i]:
            continue
        mask, summed = np.zeros((0, 0, 0), np.bool_), np.zeros((1, 1, 1), np.int32)
        for m in range(_neighbours(i, lo, hi, grid, found)):
            j = found[m]
            if j <= i or suppressed[j]:
                continue
            a_min, limit = _pair_limit(i, j, volumes, thresh)
            counters[TESTED] += 1
            if _boxes_keep(i, j, lo, hi, limit, box_lo, box_hi):
                counters[BY_BOXES] += 1
                continue
            if mask.size == 0:
                mask, summed = _rasterise(i, centres, inv_dist, lo, hi, table)
            suppressed[j] = _suppresses(i, j, mask, summed, polyhedra, dist, vertices, table,
                                        thresh, a_min, limit, box_lo, box_hi, counters)
    return ~suppressed


@numba.njit(cache=True, nogil=True)
def _suppressed_by_kept(j, kept, polyhedra, dist, vertices, grid, table, thresh, box_lo, box_hi,
                        found, counters):
    """Whether a kept candidate ranked above ``j`` suppresses it (the same pair decisions as
    :func:`_suppress_loop`)."""
    centres, inv_dist, volumes, lo, hi = polyhedra
    for m in range(_neighbours(j, lo, hi, grid, found)):
        i = found[m]
        if i >= j or not kept[i]:
            continue
        a_min, limit = _pair_limit(i, j, volumes, thresh)
        counters[TESTED] += 1
        if _boxes_keep(i, j, lo, hi, limit, box_lo, box_hi):
            counters[BY_BOXES] += 1
            continue
        mask, summed = _rasterise(i, centres, inv_dist, lo, hi, table)
        if _suppresses(i, j, mask, summed, polyhedra, dist, vertices, table, thresh, a_min,
                       limit, box_lo, box_hi, counters):
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _mark_dependents(i, dirty, polyhedra, grid, thresh, box_lo, box_hi, found):
    """Mark every candidate ranked below ``i`` that ``i`` could suppress (boxes that do not
    keep the pair by themselves) for re-deciding."""
    _, _, volumes, lo, hi = polyhedra
    for m in range(_neighbours(i, lo, hi, grid, found)):
        j = found[m]
        if j > i and not dirty[j]:
            _, limit = _pair_limit(i, j, volumes, thresh)
            dirty[j] = not _boxes_keep(i, j, lo, hi, limit, box_lo, box_hi)


@numba.njit(cache=True, nogil=True)
def _resuppress_loop(polyhedra, dist, vertices, grid, table, thresh, kept, allowed, dirty,
                     counters):
    """Re-decide the ``dirty`` candidates in rank order; a changed fate marks its dependents.

    By induction on rank: a candidate never marked has the same allowance and the same kept
    candidates able to suppress it as before, so its fate stands.
    """
    box_lo, box_hi = np.empty(3, np.int64), np.empty(3, np.int64)
    found = np.empty(kept.shape[0], np.int64)
    for j in range(kept.shape[0]):
        if not dirty[j]:
            continue
        counters[DECIDED] += 1
        fate = allowed[j] and not _suppressed_by_kept(j, kept, polyhedra, dist, vertices, grid,
                                                      table, thresh, box_lo, box_hi, found,
                                                      counters)
        if fate != kept[j]:
            kept[j] = fate
            _mark_dependents(j, dirty, polyhedra, grid, thresh, box_lo, box_hi, found)
    return kept


@numba.njit(cache=True, nogil=True)
def _close_dependents(polyhedra, grid, thresh, dirty):
    """Mark, in rank order, every candidate that a marked one could suppress (transitively)."""
    box_lo, box_hi = np.empty(3, np.int64), np.empty(3, np.int64)
    found = np.empty(dirty.shape[0], np.int64)
    for i in range(dirty.shape[0]):
        if dirty[i]:
            _mark_dependents(i, dirty, polyhedra, grid, thresh, box_lo, box_hi, found)
    return dirty


@numba.njit(cache=True, nogil=True)
def _meets_owned(h, owned, polyhedra, grid, thresh, box_lo, box_hi, found):
    """Whether ``h`` could suppress or be suppressed by an owned candidate."""
    _, _, volumes, lo, hi = polyhedra
    for m in range(_neighbours(h, lo, hi, grid, found)):
        k = found[m]
        if owned[k]:
            _, limit = _pair_limit(h, k, volumes, thresh)
            if not _boxes_keep(h, k, lo, hi, limit, box_lo, box_hi):
                return True
    return False


@numba.njit(cache=True, nogil=True)
def _meets_core(owned, polyhedra, grid, thresh):
    """Which candidates are owned, or could suppress or be suppressed by an owned one."""
    box_lo, box_hi = np.empty(3, np.int64), np.empty(3, np.int64)
    found = np.empty(owned.shape[0], np.int64)
    needed = owned.copy()
    for h in range(owned.shape[0]):
        if not owned[h]:
            needed[h] = _meets_owned(h, owned, polyhedra, grid, thresh, box_lo, box_hi, found)
    return needed


def meets_core(dist, points, geometry, thresh, owned):
    """The owned candidates and those that could suppress or be suppressed by an owned one.

    A pair whose boxes keep it by themselves (see ``_boxes_keep``) is never suppressed, by
    this backend nor by StarDist's (its overlap cannot exceed the shared voxel box).

    Parameters
    ----------
    dist, points, geometry, thresh
        As for :func:`suppress_counting_pairs` (any order).
    owned : ndarray of bool (N,)

    Returns
    -------
    ndarray of bool (N,)
    """
    owned = np.asarray(owned, bool)
    if owned.all() or len(owned) == 0:
        return owned.copy()
    polyhedra, _, _, grid, _, thresh = _loop_inputs(dist, points, geometry, thresh, table=False)
    return _meets_core(owned, polyhedra, grid, thresh)


def non_maximum_suppression(dist, points, geometry, thresh):
    """Kept candidates of StarDist's NMS rule, for candidates in decreasing rank order.

    See :func:`suppress_counting_pairs` for the parameters.

    Returns
    -------
    kept : ndarray of bool (N,)
    """
    return suppress_counting_pairs(dist, points, geometry, thresh)[0]


def suppress_counting_pairs(dist, points, geometry, thresh):
    """:func:`non_maximum_suppression`, also telling how its pairs were decided.

    Parameters
    ----------
    dist : ndarray (N, n_rays)
    points : ndarray of int (N, 3)
        Integer centres (z, y, x).
    geometry : render.RayGeometry
    thresh : float
        Suppress ``j`` when more than ``thresh * min(volume_i, volume_j)`` of its voxels are
        also voxels of a kept, higher ranked ``i``.

    Returns
    -------
    kept : ndarray of bool (N,)
    counts : PairCounts
    """
    counters = np.zeros(len(PairCounts._fields), np.int64)
    if len(dist) == 0:
        return np.zeros(0, bool), PairCounts(*counters)
    kept = _suppress_loop(*_loop_inputs(dist, points, geometry, thresh), counters)
    return kept, PairCounts(*(int(c) for c in counters))


def resuppress_counting_pairs(dist, points, geometry, thresh, kept, allowed_before, allowed):
    """Update a result of :func:`suppress_counting_pairs` after the allowed candidates changed.

    Only the candidates whose fate can change are decided again: those whose allowance
    changed, and those ranked below a candidate whose fate changed that it could suppress,
    transitively. The result equals a full run over the ``allowed`` candidates.

    Parameters
    ----------
    dist, points, geometry, thresh
        As for :func:`suppress_counting_pairs`, over all candidates (in rank order).
    kept : ndarray of bool (N,)
        The result of the NMS over the candidates in ``allowed_before`` (False elsewhere).
    allowed_before, allowed : ndarray of bool (N,)
        Candidates taking part before and now (the others count as suppressed).

    Returns
    -------
    kept : ndarray of bool (N,)
    counts : PairCounts
        ``decided`` counts the candidates decided again.
    """
    counters = np.zeros(len(PairCounts._fields), np.int64)
    dirty = np.asarray(allowed_before, bool) != np.asarray(allowed, bool)
    kept = np.array(kept, bool)
    if dirty.any():
        kept = _resuppress_loop(*_loop_inputs(dist, points, geometry, thresh), kept,
                                np.asarray(allowed, bool), dirty, counters)
    return kept, PairCounts(*(int(c) for c in counters))


def fates_that_can_change(dist, points, geometry, thresh, changed):
    """The candidates whose fate can change when those ``changed`` may: these and,
    transitively, every candidate ranked below one of them that it could suppress.

    For a backend that cannot update a result (StarDist's): it decides these again. Whether
    a pair could suppress is decided by boxes alone (``_boxes_keep``), which holds for
    StarDist's rule as for this backend's.

    Parameters
    ----------
    dist, points, geometry, thresh
        As for :func:`suppress_counting_pairs` (in rank order).
    changed : ndarray of bool (N,)

    Returns
    -------
    ndarray of bool (N,)
    """
    dirty = np.array(changed, bool)
    if not dirty.any():
        return dirty
    polyhedra, _, _, grid, _, thresh = _loop_inputs(dist, points, geometry, thresh, table=False)
    return _close_dependents(polyhedra, grid, thresh, dirty)


def _loop_inputs(dist, points, geometry, thresh, table=True):
    """Polyhedra, distances, vertices, neighbour grid, cone table (None without ``table``) and
    threshold of the loops."""
    dist = np.ascontiguousarray(dist, np.float32)
    polyhedra = prepare_polyhedra(dist, points, geometry)
    grid = neighbour_grid(polyhedra)
    return (polyhedra, dist, np.ascontiguousarray(geometry.vertices, np.float32), grid,
            cone_table(geometry, grid.reach) if table else None, np.float32(thresh))
