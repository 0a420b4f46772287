"""Shared fixtures: the bundled demo model and small synthetic volumes."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

# a hung test prints every process's stacks and fails, instead of waiting for CI's time limit
from hang_watchdog import (  # noqa: F401
    pytest_configure,
    pytest_runtest_protocol,
    pytest_terminal_summary,
    pytest_unconfigure,
)

from stardist_hpc.config import ImageSection, ModelSection
from stardist_hpc.synthetic import (  # noqa: F401
    SYNTHETIC_NMS_THRESH,
    SYNTHETIC_RAYS,
    ellipsoid_dist,
    nuclei_volume,
    random_centres,
    synthetic_candidates,
    write_candidate_file,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def demo_model_section():
    """Config section naming the committed demo model."""
    return ModelSection(basedir=MODELS, name="demo")


@pytest.fixture(scope="session")
def demo_model(demo_model_section):
    """The committed demo StarDist3D model, loaded once per test session (imports TensorFlow)."""
    from stardist_hpc.predict.step import load_model
    return load_model(demo_model_section.basedir / demo_model_section.name)


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


class SingleProcessResult:
    """One NMS over a whole candidate file, in the total order, rendered by StarDist.

    With ``backend='stardist'`` everything is StarDist's own (its NMS and polyhedron_to_label);
    with ``backend='fast'`` the kept set comes from ``stardist_hpc.segment.nms_fast`` run once
    over the whole file. The total order is spelled out here (decreasing prob, then point z, y,
    x, then file row) rather than taken from stardist_hpc.
    """

    def __init__(self, path, thresh=SYNTHETIC_NMS_THRESH, backend="stardist"):
        import json

        import h5py
        from stardist.geometry import polyhedron_to_label
        from stardist.rays3d import rays_from_json
        with h5py.File(path, "r") as f:
            prob, dist, points = f["prob"][()], f["dist"][()], f["points"][()]
            image_shape = tuple(f.attrs["image_shape"])
            rays = rays_from_json(json.loads(f.attrs["rays_json"]))
        rows = np.arange(len(prob))
        order = np.lexsort((rows, points[:, 2], points[:, 1], points[:, 0], -prob.astype(float)))
        scores = np.empty(len(prob), np.float32)
        scores[order] = np.arange(len(prob), 0, -1)
        kept = _single_process_nms(dist, points, rays, scores, order, thresh, backend)
        #: file rows of the kept candidates, by id (id 1 first)
        self.rows = order[kept[order]]
        ids = np.arange(1, len(self.rows) + 1)
        self.labels = polyhedron_to_label(dist[self.rows], points[self.rows], rays, image_shape,
                                          prob=scores[self.rows], labels=ids, verbose=False)


def _single_process_nms(dist, points, rays, scores, order, thresh, backend):
    """Kept flags by file row."""
    if backend == "stardist":
        from stardist.nms import non_maximum_suppression_3d_inds
        return non_maximum_suppression_3d_inds(dist, points, rays, scores, thresh, verbose=False)
    from stardist_hpc.geometry.rays import RayGeometry
    from stardist_hpc.segment.nms_fast import non_maximum_suppression
    geometry = RayGeometry(np.asarray(rays.vertices, np.float32), np.asarray(rays.faces, np.int32))
    kept = np.empty(len(order), bool)
    kept[order] = non_maximum_suppression(dist[order], points[order], geometry, thresh)
    return kept


@pytest.fixture(scope="session")
def nuclei_references(nuclei_candidates):
    """Single-process results on ``nuclei_candidates``, by NMS backend."""
    return {backend: SingleProcessResult(nuclei_candidates, backend=backend)
            for backend in ("stardist", "fast")}


def _stardist_libgomp():
    """StarDist's bundled OpenMP runtime (loaded with its C extension), via ctypes."""
    import ctypes

    import stardist.lib.stardist3d  # noqa: F401  (loads the library)
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "libgomp" in line})
    return ctypes.CDLL(next((p for p in paths if "stardist" in p), paths[0]))


@pytest.fixture(scope="module")
def dask_client():
    """A Dask client of one in-process worker (threads): in-process transport; the
    scheduler's HTTP server takes any free local port (with None it tries 8787 and warns,
    an error here, when another cluster on the machine holds that port)."""
    import distributed
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address="127.0.0.1:0") as client:
        yield client


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


def patch_tasks_in_process(patch):
    """Make ``hpc.run`` execute its tasks in this process instead of on a Dask cluster
    (``patch``: a pytest MonkeyPatch)."""
    from stardist_hpc.segment import step as hpc
    from stardist_hpc.segment.cluster import run_in_process
    patch.setattr(hpc, "start_cluster", lambda cluster: contextlib.nullcontext())
    patch.setattr(hpc, "run_tasks", lambda client, *task, **options: run_in_process(*task))


@pytest.fixture
def in_process(monkeypatch):
    """``hpc.run`` executes its tasks in this process (see `patch_tasks_in_process`)."""
    patch_tasks_in_process(monkeypatch)
