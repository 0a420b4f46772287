"""Shared fixtures: the bundled demo model and small synthetic volumes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from stardist_hpc.config import ImageSection, ModelSection
from stardist_hpc.synthetic import nuclei_volume

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def demo_model_section():
    """Config section naming the committed demo model."""
    return ModelSection(basedir=MODELS, name="demo")


@pytest.fixture(scope="session")
def demo_model(demo_model_section):
    """The committed demo StarDist3D model, loaded once per test session (imports TensorFlow)."""
    from stardist_hpc.predict import load_model
    return load_model(demo_model_section)


@pytest.fixture(scope="session")
def small_nuclei():
    """A small synthetic nuclei image (float32) and its ground truth, shape not block-aligned."""
    return nuclei_volume((37, 91, 117), 45, seed=7)


@pytest.fixture
def small_nuclei_tif(tmp_path, small_nuclei):
    """``small_nuclei`` written as a float32 TIFF; returns its ImageSection."""
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, small_nuclei[0].astype(np.float32))
    return ImageSection(path=path, dataset=None, channel=0, axes=None)


# ---------------------------------------------------------------------------------------------
# synthetic StarDist candidates for the HPC step, and StarDist's single-process result on them

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
    rays = Rays_GoldenSpiral(n_rays, anisotropy=(2, 1, 1))
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


def write_candidate_file(path, image_shape, rays, prob, dist, points, *,
                         block_shape=(None, 32, 32), nms_thresh=SYNTHETIC_NMS_THRESH):
    """Write candidates as local_prediction.py does: block by block, shuffled within blocks."""
    import json

    from stardist_hpc.candidates import CandidateMeta, CandidateWriter
    from stardist_hpc.tiling import grid_boxes
    meta = CandidateMeta(image_shape=tuple(image_shape), rays_json=json.dumps(rays.to_json()),
                         grid=(1, 2, 2), prob_thresh=0.5, nms_thresh=nms_thresh,
                         model_name="synthetic")
    rng = np.random.default_rng(len(prob))
    with CandidateWriter(path, meta) as writer:
        for box in grid_boxes(image_shape, block_shape):
            inside = rng.permutation(np.flatnonzero(box.contains(points)))
            writer.append(box.lo, box.hi, prob[inside], dist[inside], points[inside])
    return path


def random_centres(image_shape, n, seed):
    """``n`` random nucleus centres inside ``image_shape``."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in image_shape], axis=1)


#: shape of the ``nuclei_candidates`` volume; its first nuclei sit on corners of 8/16/24 grids.
NUCLEI_SHAPE = (16, 48, 56)


@pytest.fixture(scope="session")
def nuclei_candidates(tmp_path_factory):
    """A candidate file of crowded nuclei, several on tile corners; returns its path."""
    corners = np.array([[8, 24, 24], [8, 16, 32], [5, 24, 40], [10, 32, 16], [3, 8, 9]])
    centres = np.concatenate([corners, random_centres(NUCLEI_SHAPE, 12, seed=3)])
    rays, prob, dist, points = synthetic_candidates(NUCLEI_SHAPE, centres, seed=4)
    path = tmp_path_factory.mktemp("candidates") / "prediction.h5"
    return write_candidate_file(path, NUCLEI_SHAPE, rays, prob, dist, points)


class StarDistResult:
    """StarDist's single-process NMS and rendering of a candidate file, in the total order.

    Computed with StarDist's own functions only: the total order is spelled out here (decreasing
    prob, then point z, y, x, then file row) rather than taken from stardist_hpc.
    """

    def __init__(self, path, thresh=SYNTHETIC_NMS_THRESH):
        import json

        import h5py
        from stardist.geometry import polyhedron_to_label
        from stardist.nms import non_maximum_suppression_3d_inds
        from stardist.rays3d import rays_from_json
        with h5py.File(path, "r") as f:
            prob, dist, points = f["prob"][()], f["dist"][()], f["points"][()]
            image_shape = tuple(f.attrs["image_shape"])
            rays = rays_from_json(json.loads(f.attrs["rays_json"]))
        rows = np.arange(len(prob))
        order = np.lexsort((rows, points[:, 2], points[:, 1], points[:, 0], -prob.astype(float)))
        scores = np.empty(len(prob), np.float32)
        scores[order] = np.arange(len(prob), 0, -1)
        kept = non_maximum_suppression_3d_inds(dist, points, rays, scores, thresh, verbose=False)
        #: file rows of the kept candidates, by id (id 1 first)
        self.rows = order[kept[order]]
        ids = np.arange(1, len(self.rows) + 1)
        self.labels = polyhedron_to_label(dist[self.rows], points[self.rows], rays, image_shape,
                                          prob=scores[self.rows], labels=ids, verbose=False)


@pytest.fixture(scope="session")
def nuclei_reference(nuclei_candidates):
    """StarDist's single-process result on ``nuclei_candidates``."""
    return StarDistResult(nuclei_candidates)


def _stardist_libgomp():
    """StarDist's bundled OpenMP runtime (loaded with its C extension), via ctypes."""
    import ctypes

    import stardist.lib.stardist3d  # noqa: F401  (loads the library)
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "libgomp" in line})
    return ctypes.CDLL(next((p for p in paths if "stardist" in p), paths[0]))


@pytest.fixture(scope="module")
def single_openmp_thread():
    """Run StarDist's C code in this process with one OpenMP thread, as Dask workers do.

    Dask starts workers with OMP_NUM_THREADS=1; in the test process itself StarDist's NMS
    would use all cores and, on a busy machine, wait milliseconds per candidate in barriers.
    """
    libgomp = _stardist_libgomp()
    previous = libgomp.omp_get_max_threads()
    libgomp.omp_set_num_threads(1)
    yield
    libgomp.omp_set_num_threads(previous)


#: shape of the ``chain_candidates`` volume.
CHAIN_SHAPE = (8, 16, 60)


@pytest.fixture(scope="session")
def chain_candidates(tmp_path_factory):
    """A suppression chain along x: each candidate overlaps only its two neighbours.

    Probability decreases along the chain, so the greedy fates alternate kept / suppressed and
    every fate depends on the whole chain before it: no fixed halo can decide it locally.
    """
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(SYNTHETIC_RAYS, anisotropy=(2, 1, 1))
    x = np.arange(0, CHAIN_SHAPE[2], 3)  # spacing 3, radius 4: overlap 0.46 > 0.3 > 0.09
    points = np.stack([np.full_like(x, 4), np.full_like(x, 8), x], axis=1).astype(np.int32)
    dist = np.tile(ellipsoid_dist(rays, (2, 4, 4)), (len(x), 1)).astype(np.float32)
    prob = np.linspace(1.0, 0.6, len(x)).astype(np.float32)
    path = tmp_path_factory.mktemp("chain") / "prediction.h5"
    return write_candidate_file(path, CHAIN_SHAPE, rays, prob, dist, points)
