"""The candidate writer continues an interrupted run's temporary file, or starts again."""
import dataclasses
import json

import h5py
import numpy as np
import pytest
from stardist import Rays_GoldenSpiral

from stardist_hpc.errors import UserError
from stardist_hpc.io.candidates import (
    INDEX_CELL_SHAPE,
    CandidateFile,
    CandidateMeta,
    CandidateWriter,
    block_cells,
)
from stardist_hpc.synthetic import write_candidate_file

N_RAYS = 8
SHAPE = (4, 8, 8)


def _meta():
    rays_json = json.dumps(Rays_GoldenSpiral(N_RAYS).to_json())
    return CandidateMeta(image_shape=SHAPE, rays_json=rays_json, grid=(1, 1, 1), prob_thresh=0.5,
                         nms_thresh=0.3)


def _block(index, n):
    """Candidates of the block whose core is z slice ``index``."""
    rng = np.random.default_rng(index)
    points = np.stack([np.full(n, index), rng.integers(0, 8, n), rng.integers(0, 8, n)], axis=1)
    return ((index, 0, 0), (index + 1, 8, 8), rng.random(n).astype(np.float32),
            rng.uniform(1, 2, (n, N_RAYS)).astype(np.float32), points.astype(np.int32))


def _interrupted(path, key, n_blocks):
    """Write ``n_blocks`` blocks, then be interrupted as by Ctrl-C."""
    with pytest.raises(KeyboardInterrupt):
        with CandidateWriter(path, _meta(), key) as writer:
            for index in range(n_blocks):
                writer.append(*_block(index, 3 + index))
            raise KeyboardInterrupt


def _finish(path, key):
    """Write the blocks a writer with ``key`` lacks; return how many it found done."""
    with CandidateWriter(path, _meta(), key) as writer:
        found = writer.n_blocks
        for index in range(found, SHAPE[0]):
            writer.append(*_block(index, 3 + index))
    return found


def _contents(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


@pytest.fixture
def uninterrupted(tmp_path):
    path = tmp_path / "reference" / "prediction.h5"
    assert _finish(path, "key") == 0
    return _contents(path)


def _assert_same(path, expected):
    datasets, attrs = _contents(path)
    assert datasets.keys() == expected[0].keys() and attrs.keys() == expected[1].keys()
    for name, values in expected[0].items():
        np.testing.assert_array_equal(datasets[name], values)


def test_an_interrupted_file_is_continued_after_its_last_block(tmp_path, uninterrupted):
    path = tmp_path / "prediction.h5"
    _interrupted(path, "key", 2)
    assert path.with_name("prediction.h5.tmp").exists() and not path.exists()
    assert _finish(path, "key") == 2
    _assert_same(path, uninterrupted)
    assert CandidateFile(path).n_candidates == sum(3 + i for i in range(SHAPE[0]))


def test_rows_of_a_block_without_its_index_entry_are_dropped(tmp_path, uninterrupted):
    path = tmp_path / "prediction.h5"
    _interrupted(path, "key", 2)
    with h5py.File(path.with_name("prediction.h5.tmp"), "r+") as f:   # killed mid-append
        for name in ("prob", "dist", "points"):
            f[name].resize(len(f[name]) + 5, axis=0)
    assert _finish(path, "key") == 2
    _assert_same(path, uninterrupted)


def test_a_file_made_from_other_input_is_not_continued(tmp_path, uninterrupted):
    path = tmp_path / "prediction.h5"
    _interrupted(path, "other image", 2)
    assert _finish(path, "key") == 0
    _assert_same(path, uninterrupted)


def test_an_unreadable_temporary_file_is_replaced(tmp_path, uninterrupted):
    path = tmp_path / "prediction.h5"
    path.with_name("prediction.h5.tmp").write_bytes(b"killed while writing its header")
    assert _finish(path, "key") == 0
    _assert_same(path, uninterrupted)


def test_an_error_removes_the_temporary_file(tmp_path):
    path = tmp_path / "prediction.h5"
    with pytest.raises(ValueError):
        with CandidateWriter(path, _meta(), "key") as writer:
            writer.append(*_block(0, 3))
            raise ValueError("a bad block")
    assert not path.with_name("prediction.h5.tmp").exists() and not path.exists()


def test_largest_extent_is_the_candidates_largest_bit_for_bit():
    from stardist_hpc.geometry.rays import candidate_extent, largest_extent

    rng = np.random.default_rng(1)
    dist = rng.uniform(0, 20, (500, 96)).astype(np.float32)
    rays = rng.normal(size=(96, 3))
    expected = candidate_extent(dist, rays).max(axis=0)
    assert largest_extent(dist, rays).tobytes() == expected.tobytes()


def _class_file(path):
    """A multi-class candidate file (2 classes) of four blocks; returns its class columns."""
    meta = dataclasses.replace(_meta(), n_classes=2)
    written = []
    with CandidateWriter(path, meta) as writer:
        for index in range(SHAPE[0]):
            block = _block(index, 3 + index)
            prob_class = np.random.default_rng(index).dirichlet(np.ones(3), len(block[2]))
            written.append(prob_class.astype(np.float32))
            writer.append(*block, prob_class=written[-1])
    return np.concatenate(written)


def test_class_probabilities_are_stored_and_read_by_row(tmp_path):
    path = tmp_path / "prediction.h5"
    expected = _class_file(path)
    candidates = CandidateFile(path)
    assert candidates.meta.n_classes == 2
    rows = np.array([0, 4, 5, 17])   # in the first, second and last block
    np.testing.assert_array_equal(candidates.read_class_probabilities(rows), expected[rows])
    assert candidates.read_class_probabilities(rows[:0]).shape == (0, 3)


def test_damaged_class_probabilities_are_errors(tmp_path):
    path = tmp_path / "prediction.h5"
    _class_file(path)
    with h5py.File(path, "r+") as f:
        f["prob_class"][5] = [0.5, np.nan, 0.5]
    with pytest.raises(UserError, match=r"dataset 'prob_class': expected finite probabilities "
                                        r"in \[0, 1\], got \[0.5, nan, 0.5\] at row 5"):
        CandidateFile(path).read_class_probabilities([5])
    with h5py.File(path, "r+") as f:
        del f["prob_class"]
    with pytest.raises(UserError, match="dataset 'prob_class': expected the class "
                                        "probabilities of 2 classes"):
        CandidateFile(path)


def test_a_box_reads_the_index_cells_it_meets_and_finds_what_a_whole_read_finds(tmp_path):
    shape = (20, 70, 90)
    rng = np.random.default_rng(3)
    n = 3000
    points = (rng.random((n, 3)) * shape).astype(np.int32)
    prob = rng.random(n).astype(np.float32)
    dist = rng.uniform(1, 4, (n, N_RAYS)).astype(np.float32)
    path = tmp_path / "cells.h5"
    write_candidate_file(path, shape, Rays_GoldenSpiral(N_RAYS), prob, dist, points,
                         block_shape=(None, 40, 40))
    candidates = CandidateFile(path)
    assert candidates.cell_shape == INDEX_CELL_SHAPE
    everything = candidates.read_box((0, 0, 0), shape)
    for _ in range(20):
        lo = rng.integers(0, shape)
        hi = lo + rng.integers(1, shape)
        rows, *values = candidates.read_box(lo, hi)
        inside = np.all((everything[3] >= lo) & (everything[3] < hi), axis=1)
        np.testing.assert_array_equal(np.sort(rows), np.sort(everything[0][inside]))
        by_row = np.argsort(rows)
        for got, whole in zip(values, everything[1:]):
            np.testing.assert_array_equal(got[by_row], whole[inside][np.argsort(
                everything[0][inside])])
    with h5py.File(path, "r") as f:   # a cell of one block holds the points inside it
        stops = f["cell_rows"][:len(block_cells((0, 0, 0), (20, 40, 40), INDEX_CELL_SHAPE))]
        assert np.all(np.diff(stops) >= 0)


def test_a_point_outside_its_index_cell_is_one_line_naming_the_row(tmp_path):
    shape = (8, 70, 70)
    rng = np.random.default_rng(4)
    points = (rng.random((400, 3)) * shape).astype(np.int32)
    path = tmp_path / "cells.h5"
    write_candidate_file(path, shape, Rays_GoldenSpiral(N_RAYS), rng.random(400).astype(np.float32),
                         rng.uniform(1, 4, (400, N_RAYS)).astype(np.float32), points,
                         block_shape=(None, 70, 70))
    with h5py.File(path, "r+") as f:   # two rows of different cells swap their points
        stops = f["cell_rows"][()]
        first, last = 0, int(stops[-2])
        p = f["points"][()]
        p[[first, last]] = p[[last, first]]
        f["points"][...] = p
    with pytest.raises(UserError, match=r"dataset 'points': expected the point at row \d+ "
                                        r"inside index cell \d+ of block 0"):
        CandidateFile(path).read_box((0, 0, 0), (8, 10, 10))
