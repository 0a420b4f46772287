"""Exactness, the dask-image way: tiled results on random volumes with odd shapes equal StarDist.

For several random candidate sets, tilings and chunkings that do not divide the volume, and both
NMS backends, the label volume of :func:`stardist_hpc.segment_candidates` on a Dask cluster
equals StarDist's own single-process ``non_maximum_suppression_3d_inds`` followed by
``polyhedron_to_label`` on the same candidates, voxel for voxel and id for id.
"""
import h5py
import numpy as np
import pytest
from conftest import SingleProcessResult

from stardist_hpc import segment_candidates
from stardist_hpc.synthetic import random_centres, synthetic_candidates, write_candidate_file

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

#: a volume no tile or chunk shape below divides.
ODD_SHAPE = (11, 37, 41)
SEEDS = (11, 12, 13)
#: (NMS tile core, label chunk) pairs: tiles smaller than two nuclei, mixed, and none at all.
TILINGS = [((None, 13, 17), (4, 11, 19)),
           ((5, 9, 23), (11, 37, 41)),
           ((None, None, None), (3, 20, 7))]


@pytest.fixture(scope="module")
def random_sets(tmp_path_factory):
    """Per seed: a crowded random candidate set and StarDist's single-process labels of it."""
    sets = {}
    for seed in SEEDS:
        centres = random_centres(ODD_SHAPE, 10, seed=seed)
        rays, prob, dist, points = synthetic_candidates(ODD_SHAPE, centres, seed=seed)
        path = write_candidate_file(tmp_path_factory.mktemp(f"seed{seed}") / "prediction.h5",
                                    ODD_SHAPE, rays, prob, dist, points, block_shape=(6, 19, 23))
        sets[seed] = path, SingleProcessResult(path).labels
    return sets


@pytest.mark.parametrize("backend", ["stardist", "fast"])
@pytest.mark.parametrize("tile_shape, chunk_shape", TILINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_tiled_equals_stardist_single_process(tmp_path, dask_client, random_sets, seed,
                                              tile_shape, chunk_shape, backend):
    path, expected = random_sets[seed]
    summary = segment_candidates(path, tmp_path / "label.h5", tile_shape=tile_shape,
                                 chunk_shape=chunk_shape, backend=backend,
                                 client=dask_client, show_progress=False)
    with h5py.File(summary.labels, "r") as f:
        labels = f["labels"][()]
    assert labels.dtype == np.uint32
    assert summary.n_objects == expected.max() > 3
    differ = np.argwhere(labels != expected)
    assert len(differ) == 0, f"{len(differ)} voxels differ, first at {differ[:3].tolist()}"
