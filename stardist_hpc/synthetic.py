"""Synthetic nuclei: volumes with ground truth (demo model, tests) and StarDist candidates
(HPC-step tests and benchmarks).

The nuclei are anisotropic, blurred, noisy ellipsoids: the z axis is sampled ``anisotropy``
times more coarsely than y and x, as in light-sheet and confocal stacks.
"""
from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

#: default voxel anisotropy (z, y, x) of the demo data: z is sampled twice as coarsely.
DEFAULT_ANISOTROPY = (2.0, 1.0, 1.0)
#: default physical nucleus radius range, in x/y voxels.
DEFAULT_RADIUS_RANGE = (5.0, 9.0)
#: placements tried per requested nucleus before giving up on a crowded volume.
_PLACEMENT_ATTEMPTS_PER_NUCLEUS = 20


def _ellipsoid_mask(radii, rotation):
    """Boolean mask of a rotated ellipsoid with semi-axes ``radii`` (in voxels, z y x)."""
    half = np.ceil(np.max(radii)).astype(int) + 1
    extent = [np.arange(-half, half + 1)] * 3
    coords = np.stack(np.meshgrid(*extent, indexing="ij"), axis=-1).astype(np.float64)
    local = coords @ rotation
    return np.sum((local / np.asarray(radii)) ** 2, axis=-1) <= 1.0


def _random_rotation(rng):
    """A uniformly random 3D rotation matrix (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def nuclei_labels(shape, n_nuclei, *, anisotropy=DEFAULT_ANISOTROPY,
                  radius_range=DEFAULT_RADIUS_RANGE, seed=0):
    """Ground-truth label volume of non-overlapping random ellipsoidal nuclei.

    Parameters
    ----------
    shape : tuple of 3 int
        Volume shape (z, y, x).
    n_nuclei : int
        Number of nuclei to place (fewer if the volume is too crowded).
    anisotropy : tuple of 3 float, optional
        Voxel size ratio (z, y, x); radii along an axis are divided by it.
    radius_range : tuple of 2 float, optional
        Range of the physical semi-axes, in units of the finest voxel size.
    seed : int, optional
        Seed of the random generator.

    Returns
    -------
    labels : ndarray of uint32, shape ``shape``
        0 is background, nuclei are numbered 1..n in placement order.
    """
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"expected a 3D shape with positive sizes, got {shape}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    placed, attempts = 0, 0
    while placed < n_nuclei and attempts < n_nuclei * _PLACEMENT_ATTEMPTS_PER_NUCLEUS:
        attempts += 1
        radii = rng.uniform(*radius_range, size=3) / np.asarray(anisotropy)
        mask = _ellipsoid_mask(radii, _random_rotation(rng))
        half = mask.shape[0] // 2
        centre = [rng.integers(0, s) for s in shape]
        lo = [c - half for c in centre]
        dst = tuple(slice(max(0, l), min(s, l + mask.shape[0])) for l, s in zip(lo, shape))
        src = tuple(slice(d.start - l, d.stop - l) for d, l in zip(dst, lo))
        piece = mask[src]
        # dilate once so that nuclei never touch: the network must see a gap to split them
        if np.any(labels[dst][ndimage.binary_dilation(piece)]):
            continue
        placed += 1
        labels[dst][piece] = placed
    return labels


def nuclei_image(labels, *, anisotropy=DEFAULT_ANISOTROPY, blur=1.0, noise=0.08, seed=0):
    """Fluorescence-like image of a label volume: blurred, textured, noisy nuclei.

    Parameters
    ----------
    labels : ndarray
        Label volume as returned by :func:`nuclei_labels`.
    anisotropy : tuple of 3 float, optional
        Voxel size ratio; the blur is correspondingly narrower along z.
    blur : float, optional
        Gaussian blur sigma along x/y, in voxels.
    noise : float, optional
        Standard deviation of the additive Gaussian noise, relative to nucleus brightness.
    seed : int, optional
        Seed of the random generator.

    Returns
    -------
    image : ndarray of float32
    """
    rng = np.random.default_rng(seed)
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.5, 1.0, size=n)]).astype(np.float32)
    image = brightness[labels]
    image *= 1.0 + 0.15 * rng.normal(size=labels.shape).astype(np.float32)
    sigma = [blur / a for a in anisotropy]
    image = ndimage.gaussian_filter(image, sigma)
    image += noise * rng.normal(size=labels.shape).astype(np.float32)
    return image.astype(np.float32)


def nuclei_volume(shape, n_nuclei, *, anisotropy=DEFAULT_ANISOTROPY, seed=0):
    """Image and ground truth of a synthetic nuclei volume.

    Returns
    -------
    image : ndarray of float32
    labels : ndarray of uint32
    """
    labels = nuclei_labels(shape, n_nuclei, anisotropy=anisotropy, seed=seed)
    return nuclei_image(labels, anisotropy=anisotropy, seed=seed + 1), labels


# ---------------------------------------------------------------------------------------------
# synthetic StarDist candidates, as a network predicts them around each nucleus

#: default ray count of synthetic candidates: small enough for fast tests.
SYNTHETIC_RAYS = 32
#: NMS threshold written into synthetic candidate files.
SYNTHETIC_NMS_THRESH = 0.3


def ellipsoid_dist(rays, radii):
    """Ray lengths (n_rays,) from the centre to the surface of an axis-aligned ellipsoid."""
    return 1.0 / np.sqrt(np.sum((rays.vertices / np.asarray(radii)) ** 2, axis=1))


def synthetic_candidates(image_shape, centres, *, n_rays=SYNTHETIC_RAYS, radius_range=(4.0, 7.0),
                         candidates_per_nucleus=(10, 40), seed=0):
    """Candidates like a network's: many jittered around each nucleus centre, prob ties at 1.

    Returns
    -------
    rays : stardist Rays
    prob : float32 (N,)
    dist : float32 (N, n_rays)
    points : int32 (N, 3)
    """
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(n_rays, anisotropy=DEFAULT_ANISOTROPY)
    rng = np.random.default_rng(seed)
    prob, dist, points = [], [], []
    for centre in np.asarray(centres):
        n = int(rng.integers(*candidates_per_nucleus, endpoint=True))
        radius = rng.uniform(*radius_range)
        jitter = rng.integers(-2, 3, size=(n, 3)) * np.array([1, 2, 2]) // 2
        points.append(np.clip(centre + jitter, 0, np.asarray(image_shape) - 1))
        shape_noise = rng.uniform(0.8, 1.2, (n, 1)) * rng.uniform(0.9, 1.1, (n, n_rays))
        dist.append(ellipsoid_dist(rays, (radius / 2, radius, radius)) * shape_noise)
        # the best candidates of a nucleus often saturate at exactly 1.0
        prob.append(np.where(rng.random(n) < 0.3, 1.0, rng.uniform(0.5, 1.0, n)))
    return (rays, np.concatenate(prob).astype(np.float32),
            np.concatenate(dist).astype(np.float32), np.concatenate(points).astype(np.int32))


def _synthetic_meta(image_shape, rays, nms_thresh):
    """Attributes of a synthetic candidate file."""
    from .io.candidates import CandidateMeta
    return CandidateMeta(image_shape=tuple(image_shape), rays_json=json.dumps(rays.to_json()),
                         grid=(1, 2, 2), prob_thresh=0.5, nms_thresh=nms_thresh,
                         model_name="synthetic")


def write_candidate_file(path, image_shape, rays, prob, dist, points, *,
                         block_shape=(None, 32, 32), nms_thresh=SYNTHETIC_NMS_THRESH):
    """Write candidates as local_prediction.py does: block by block, shuffled within blocks."""
    from .geometry.tiling import grid_boxes
    from .io.candidates import CandidateWriter
    rng = np.random.default_rng(len(prob))
    with CandidateWriter(path, _synthetic_meta(image_shape, rays, nms_thresh)) as writer:
        for box in grid_boxes(image_shape, block_shape):
            inside = rng.permutation(np.flatnonzero(box.contains(points)))
            writer.append(box.lo, box.hi, prob[inside], dist[inside], points[inside])
    return path


#: volume of :func:`demo_candidate_file`: small enough for a docstring example.
EXAMPLE_SHAPE = (16, 48, 48)
#: nucleus centres of :func:`demo_candidate_file` stay this far apart (voxels, physical units).
EXAMPLE_MIN_DISTANCE = 16.0


def demo_candidate_file(path, n_nuclei=3, *, seed=0):
    """A small candidate file of ``n_nuclei`` separated synthetic nuclei (for examples).

    Parameters
    ----------
    path : str or Path
        File to write (a ``prediction.h5`` of this project's format).
    n_nuclei : int
        Nuclei placed in an :data:`EXAMPLE_SHAPE` volume, each with many candidates.
    seed : int

    Returns
    -------
    Path
    """
    centres = separated_centres(EXAMPLE_SHAPE, n_nuclei, EXAMPLE_MIN_DISTANCE, seed=seed)
    rays, prob, dist, points = synthetic_candidates(EXAMPLE_SHAPE, centres, seed=seed)
    return write_candidate_file(path, EXAMPLE_SHAPE, rays, prob, dist, points)


def random_centres(image_shape, n, seed):
    """``n`` random nucleus centres inside ``image_shape``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in image_shape], axis=1)


def separated_centres(image_shape, n, min_distance, *, anisotropy=DEFAULT_ANISOTROPY, seed=0):
    """Up to ``n`` random nucleus centres at least ``min_distance`` apart (physical units).

    Random sequential addition: like nuclei in tissue, which press against each other but do
    not interpenetrate (``min_distance`` about the sum of two radii), unlike
    :func:`random_centres`. Returns fewer centres when the volume is full.
    """
    rng = np.random.default_rng(seed)
    scale = np.asarray(anisotropy, np.float64)
    centres = np.zeros((0, 3), np.int64)
    for _ in range(n * _PLACEMENT_ATTEMPTS_PER_NUCLEUS):
        if len(centres) == n:
            break
        centre = np.array([rng.integers(0, s) for s in image_shape])
        if np.all(np.linalg.norm((centres - centre) * scale, axis=1) >= min_distance):
            centres = np.vstack([centres, centre])
    return centres


def _ray_lengths_to_ellipsoid(offsets, directions, radii):
    """Lengths (N, n_rays) of rays from ``offsets`` (N, 3) inside an axis-aligned ellipsoid
    (semi-axes ``radii``, (3,) or one row per offset (N, 3), centred at 0) along
    ``directions`` (n_rays, 3) to its surface."""
    radii = np.asarray(radii, np.float64)[..., None, :]
    p = offsets[:, None, :] / radii
    u = directions[None, :, :] / radii
    a = np.sum(u * u, axis=-1)
    b = np.sum(p * u, axis=-1)
    c = np.sum(p * p, axis=-1) - 1.0
    return (-b + np.sqrt(b * b - a * c)) / a


def dense_candidates(image_shape, centres, *, n_rays=96, anisotropy=DEFAULT_ANISOTROPY,
                     radius_range=DEFAULT_RADIUS_RANGE, candidates_per_nucleus=110,
                     inner_fraction=0.5, seed=0):
    """Candidates as dense as a trained network's: many per nucleus, spread over its interior.

    Each nucleus is an ellipsoid (z semi-axis divided by the anisotropy); its candidates sit at
    random voxels within ``inner_fraction`` of its radii, with the exact ray lengths from their
    point to its surface times a little noise, and probabilities that fall off from the centre.

    Returns
    -------
    rays : stardist Rays
    prob : float32 (N,)
    dist : float32 (N, n_rays)
    points : int32 (N, 3)
    """
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)
    directions = np.asarray(rays.vertices, np.float64)
    rng = np.random.default_rng(seed)
    prob, dist, points = [], [], []
    for centre in np.asarray(centres):
        radii = rng.uniform(*radius_range) / np.asarray(anisotropy, np.float64)
        unit = rng.normal(size=(candidates_per_nucleus, 3))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        spread = inner_fraction * rng.random((candidates_per_nucleus, 1)) ** (1 / 3)
        offsets = np.rint(unit * spread * radii)
        point = np.clip(centre + offsets, 0, np.asarray(image_shape) - 1)
        noise = rng.uniform(0.95, 1.05, (candidates_per_nucleus, n_rays))
        dist.append(_ray_lengths_to_ellipsoid(point - centre, directions, radii) * noise)
        points.append(point)
        prob.append(np.clip(1.0 - spread[:, 0] + rng.normal(0, 0.05, len(spread)), 0.5, 1.0))
    return (rays, np.concatenate(prob).astype(np.float32),
            np.concatenate(dist).astype(np.float32), np.concatenate(points).astype(np.int32))


# ---------------------------------------------------------------------------------------------
# noisy candidates: bumpy, rotated, interpenetrating nuclei, as a trained network emits them

#: physical nucleus radius (x/y voxels) of noisy candidates; each axis varies by
#: ``NOISY_RADIUS_SPREAD`` (relative) around it.
NOISY_RADIUS = 9.0
NOISY_RADIUS_SPREAD = 0.3
#: independent relative noise on every ray length (uniform, +-).
NOISY_RAY_NOISE = 0.05
#: candidates sit on the grid points whose ellipsoidal radius coordinate (0 at the centre, 1 on
#: the surface) is at most this: about 110 per nucleus of average size on the network grid.
NOISY_INNER_FRACTION = 0.67
#: the network predicts on this (z, y, x) grid of the image.
NETWORK_GRID = (1, 2, 2)
#: prob falls from 1 at a nucleus centre to this at the edge of its candidate region (the
#: network's threshold), before noise of this standard deviation is added.
NOISY_PROB_EDGE = 0.5
NOISY_PROB_NOISE = 0.05
#: prob is clipped to this range: above the network's threshold, saturating at exactly 1.0.
NOISY_PROB_RANGE = (0.501, 1.0)


def _yx_rotation(angle):
    """Rotation matrix (z, y, x) by ``angle`` in the y-x plane."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _grid_points_near(centre, extent, image_shape):
    """Network grid points of the image within ``extent`` (z, y, x) of ``centre``."""
    axes = []
    for c, e, step, size in zip(centre, extent, NETWORK_GRID, image_shape):
        first = max(0, int(np.ceil((c - e) / step)) * step)
        axes.append(np.arange(first, min(size - 1, c + e) + 1, step))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def noisy_candidates(image_shape, centres, *, n_rays=96, anisotropy=DEFAULT_ANISOTROPY,
                     radius=NOISY_RADIUS, seed=0):
    """Candidates as a trained network emits them on crowded, irregular nuclei.

    Each nucleus is an ellipsoid with semi-axes ``radius / anisotropy`` varying by
    ``NOISY_RADIUS_SPREAD`` per axis, rotated in the y-x plane. Its candidates are the
    network grid points (``NETWORK_GRID``, inside the image) within ``NOISY_INNER_FRACTION`` of
    its radii; their rays reach its surface, each with independent noise
    (``NOISY_RAY_NOISE``), so the polyhedra are bumpy. ``prob`` is the normalised inner
    distance (1 at the centre, ``NOISY_PROB_EDGE`` at the edge of the candidate region) plus
    noise, clipped to
    ``NOISY_PROB_RANGE``: many exact ties at 1.0. Centres from :func:`random_centres` make
    neighbouring nuclei interpenetrate.

    Returns
    -------
    rays : stardist Rays
    prob : float32 (N,)
    dist : float32 (N, n_rays)
    points : int32 (N, 3)
    """
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)
    directions = np.asarray(rays.vertices, np.float64)
    rng = np.random.default_rng(seed)
    prob, dist, points = [], [], []
    for centre in np.asarray(centres):
        radii = radius * rng.uniform(1 - NOISY_RADIUS_SPREAD, 1 + NOISY_RADIUS_SPREAD, 3) \
            / np.asarray(anisotropy, np.float64)
        rotation = _yx_rotation(rng.uniform(0, np.pi))
        # a y-x rotation keeps the z extent; y and x reach at most the larger y-x radius
        extent = NOISY_INNER_FRACTION * np.array([radii[0], radii[1:].max(), radii[1:].max()])
        grid = _grid_points_near(centre, extent, image_shape)
        # coordinates in the ellipsoid's own axes (the columns of ``rotation``)
        local = (grid - centre) @ rotation
        radial = np.sqrt(np.sum((local / radii) ** 2, axis=1))
        near = radial <= NOISY_INNER_FRACTION
        noise = rng.uniform(1 - NOISY_RAY_NOISE, 1 + NOISY_RAY_NOISE, (near.sum(), n_rays))
        dist.append(_ray_lengths_to_ellipsoid(local[near], directions @ rotation, radii) * noise)
        points.append(grid[near])
        inner = 1 - (1 - NOISY_PROB_EDGE) * radial[near] / NOISY_INNER_FRACTION
        prob.append(np.clip(inner + rng.normal(0, NOISY_PROB_NOISE, len(inner)),
                            *NOISY_PROB_RANGE))
    return (rays, np.concatenate(prob).astype(np.float32),
            np.concatenate(dist).astype(np.float32), np.concatenate(points).astype(np.int32))


#: prob of a dense candidate: 1 at its nucleus' centre, falling off by its relative distance,
#: plus this much noise, clipped to [DENSE_PROB_MIN, 1].
DENSE_PROB_NOISE, DENSE_PROB_MIN = 0.05, 0.5
#: relative noise of dense candidates' ray lengths.
DENSE_DIST_NOISE = 0.05


def write_dense_candidate_file(path, image_shape, n_nuclei, *, n_rays=96,
                               candidates_per_nucleus=88, anisotropy=DEFAULT_ANISOTROPY,
                               radius_range=DEFAULT_RADIUS_RANGE, inner_fraction=0.5,
                               block_shape=(None, 256, 256), seed=0):
    """Write a candidate file like :func:`dense_candidates`'s, vectorised and block by block.

    For benchmarks at scale: points and probabilities of all nuclei are drawn at once (small
    arrays), ray lengths only for one prediction block at a time (the large array), so memory
    stays that of one block. Nucleus centres are :func:`random_centres` (they may overlap).

    Returns
    -------
    n_candidates : int
    """
    from stardist import Rays_GoldenSpiral

    from .geometry.tiling import Grid
    from .io.candidates import CandidateWriter
    rng = np.random.default_rng(seed)
    shape = np.asarray(image_shape)
    centres = random_centres(image_shape, n_nuclei, seed)
    radii = rng.uniform(*radius_range, (n_nuclei, 1)) / np.asarray(anisotropy, np.float64)
    nucleus = np.repeat(np.arange(n_nuclei), candidates_per_nucleus)
    unit = rng.normal(size=(len(nucleus), 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    spread = inner_fraction * rng.random(len(nucleus)) ** (1 / 3)
    points = np.clip(centres[nucleus] + np.rint(unit * spread[:, None] * radii[nucleus]),
                     0, shape - 1).astype(np.int32)
    prob = np.clip(1.0 - spread + rng.normal(0, DENSE_PROB_NOISE, len(spread)),
                   DENSE_PROB_MIN, 1.0).astype(np.float32)
    rays = Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)
    directions = np.asarray(rays.vertices, np.float64)
    grid = Grid(tuple(image_shape), block_shape)
    block = grid.index_of(points)
    order = np.argsort(block, kind="stable")
    bounds = np.searchsorted(block[order], np.arange(len(grid) + 1))
    with CandidateWriter(path, _synthetic_meta(image_shape, rays, SYNTHETIC_NMS_THRESH)) as w:
        for index, box in enumerate(grid):
            rows = order[bounds[index]:bounds[index + 1]]
            owner = nucleus[rows]
            dist = _ray_lengths_to_ellipsoid(points[rows] - centres[owner], directions,
                                             radii[owner])
            dist *= rng.uniform(1 - DENSE_DIST_NOISE, 1 + DENSE_DIST_NOISE, dist.shape)
            w.append(box.lo, box.hi, prob[rows], dist.astype(np.float32), points[rows])
    return len(points)
