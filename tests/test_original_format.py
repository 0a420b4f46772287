"""Tests of the streaming conversion of the original pipeline's probabilities.h5."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from stardist import Rays_GoldenSpiral

from stardist_hpc.errors import UserError
from stardist_hpc.geometry.rays import candidate_extent, ray_vectors
from stardist_hpc.io.model_files import ModelInfo
from stardist_hpc.io.original_format import index_original_file, is_original_format

N_RAYS = 96
IMAGE_SHAPE = (40, 90, 70)
#: small cells and reads, so that many buckets and slice boundaries are exercised.
BUCKET_SHAPE = (8, 16, 32)
ROWS_PER_READ = 777
N_CANDIDATES = 5000


@pytest.fixture(scope="module")
def model():
    rays = Rays_GoldenSpiral(N_RAYS, anisotropy=(2, 1, 1))
    return ModelInfo(name="test_model", rays_json=json.dumps(rays.to_json()), n_rays=N_RAYS,
                     grid=(1, 2, 2), prob_thresh=0.5, nms_thresh=0.4)


def write_original(path, n=N_CANDIDATES, n_rays=N_RAYS, shape=IMAGE_SHAPE, seed=0, skip=()):
    """A random probabilities.h5 in the original layout; datasets in ``skip`` are left out."""
    rng = np.random.default_rng(seed)
    data = {"prob": rng.random(n, np.float32),
            "dist": rng.uniform(1, 6, (n, n_rays)).astype(np.float32),
            "points": np.stack([rng.integers(0, s, n) for s in shape], axis=1),
            "shape_inst": np.array(shape)}
    with h5py.File(path, "w") as f:
        for name, values in data.items():
            if name not in skip:
                f.create_dataset(name, data=values)
    return data


def rows_as_tuples(prob, dist, points):
    return sorted((tuple(p), float(q), tuple(d)) for p, q, d in
                  zip(points.tolist(), prob.tolist(), dist.tolist()))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("original")
    data = write_original(tmp / "probabilities.h5")
    cf = index_original_file(tmp / "probabilities.h5", tmp / "prediction.h5", model,
                             bucket_shape=BUCKET_SHAPE, rows_per_read=ROWS_PER_READ)
    return data, cf


def test_every_candidate_once(converted):
    data, cf = converted
    with h5py.File(cf.path, "r") as f:
        got = rows_as_tuples(f["prob"][()], f["dist"][()], f["points"][()])
    assert got == rows_as_tuples(data["prob"], data["dist"], data["points"])


def test_meta_and_block_layout(converted, model):
    data, cf = converted
    assert cf.meta.image_shape == IMAGE_SHAPE
    assert cf.meta.rays_json == model.rays_json and cf.meta.model_name == model.name
    assert cf.meta.grid == model.grid and cf.meta.image_path == ""
    assert cf.n_candidates == N_CANDIDATES
    b = cf.blocks
    n_cells = np.prod([-(-s // c) for s, c in zip(IMAGE_SHAPE, BUCKET_SHAPE)])
    assert len(b) == n_cells  # every cell holds some of the 5000 candidates
    assert b["row_start"][0] == 0 and b["row_stop"][-1] == N_CANDIDATES
    assert np.all(b["row_start"][1:] == b["row_stop"][:-1])
    assert np.all(b["row_stop"] > b["row_start"])


def test_rows_in_core_and_extents_cover(converted, model):
    _, cf = converted
    rays = ray_vectors(model.rays_json)
    with h5py.File(cf.path, "r") as f:
        dist, points = f["dist"][()], f["points"][()]
    for b in cf.blocks:
        rows = slice(b["row_start"], b["row_stop"])
        lo, hi = [b[a] for a in ("z0", "y0", "x0")], [b[a] for a in ("z1", "y1", "x1")]
        assert np.all((points[rows] >= lo) & (points[rows] < hi))
        extent = candidate_extent(dist[rows], rays).max(axis=0)
        np.testing.assert_array_equal([b["extent_z"], b["extent_y"], b["extent_x"]], extent)


def test_rows_within_a_bucket_keep_file_order(converted):
    data, cf = converted
    source_row = {(tuple(p), float(q)): i for i, (p, q) in
                  enumerate(zip(data["points"].tolist(), data["prob"].tolist()))}
    with h5py.File(cf.path, "r") as f:
        points, prob = f["points"][()].tolist(), f["prob"][()].tolist()
    for b in cf.blocks:
        rows = range(b["row_start"], b["row_stop"])
        order = [source_row[tuple(points[r]), prob[r]] for r in rows]
        assert order == sorted(order)


def test_read_box_returns_the_source_candidates_inside(converted):
    data, cf = converted
    rng = np.random.default_rng(1)
    for _ in range(5):
        lo = np.array([rng.integers(0, s - 1) for s in IMAGE_SHAPE])
        hi = np.array([rng.integers(l + 1, s + 1) for l, s in zip(lo, IMAGE_SHAPE)])
        _, prob, dist, points = cf.read_box(lo, hi)
        inside = np.all((data["points"] >= lo) & (data["points"] < hi), axis=1)
        assert inside.any()
        assert rows_as_tuples(prob, dist, points) == rows_as_tuples(
            data["prob"][inside], data["dist"][inside], data["points"][inside])


def test_sparse_file_has_blocks_for_non_empty_cells_only(tmp_path, model):
    data = write_original(tmp_path / "probabilities.h5", n=20)
    cf = index_original_file(tmp_path / "probabilities.h5", tmp_path / "prediction.h5", model,
                             bucket_shape=BUCKET_SHAPE, rows_per_read=7)
    cells = {tuple(p) for p in (data["points"] // BUCKET_SHAPE).tolist()}
    assert len(cf.blocks) == len(cells)
    _, prob, dist, points = cf.read_box((0, 0, 0), IMAGE_SHAPE)
    assert rows_as_tuples(prob, dist, points) == rows_as_tuples(
        data["prob"], data["dist"], data["points"])


def test_reads_are_bounded_by_rows_per_read(tmp_path, model, monkeypatch):
    src = tmp_path / "probabilities.h5"
    write_original(src)
    rows_read = []
    getitem = h5py.Dataset.__getitem__

    def recording_getitem(self, key, *args, **kwargs):
        values = getitem(self, key, *args, **kwargs)
        if self.file.filename == str(src) and self.name != "/shape_inst":
            rows_read.append(len(values))
        return values

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_getitem)
    index_original_file(src, tmp_path / "prediction.h5", model, bucket_shape=BUCKET_SHAPE,
                        rows_per_read=ROWS_PER_READ)
    assert rows_read and max(rows_read) <= ROWS_PER_READ
    # two passes over points, one over prob and dist
    assert sum(rows_read) == 4 * N_CANDIDATES


def test_empty_file(tmp_path, model):
    write_original(tmp_path / "probabilities.h5", n=0)
    cf = index_original_file(tmp_path / "probabilities.h5", tmp_path / "prediction.h5", model)
    assert cf.n_candidates == 0 and len(cf.blocks) == 0
    _, prob, dist, points = cf.read_box((0, 0, 0), IMAGE_SHAPE)
    assert len(prob) == 0 and dist.shape == (0, N_RAYS)
    assert np.all(cf.max_extent == 0)


def test_idempotent(tmp_path, model):
    src, dst = tmp_path / "probabilities.h5", tmp_path / "prediction.h5"
    write_original(src)
    index_original_file(src, dst, model, bucket_shape=BUCKET_SHAPE)
    mtime = dst.stat().st_mtime_ns
    src.unlink()  # a second call must not even read the source
    cf = index_original_file(src, dst, model, bucket_shape=BUCKET_SHAPE)
    assert dst.stat().st_mtime_ns == mtime and cf.n_candidates == N_CANDIDATES
    assert not dst.with_name(dst.name + ".tmp").exists()


def test_is_original_format(tmp_path, converted):
    write_original(tmp_path / "probabilities.h5", n=10)
    (tmp_path / "not_hdf5.h5").write_text("hello")
    assert is_original_format(tmp_path / "probabilities.h5")
    assert not is_original_format(converted[1].path)
    assert not is_original_format(tmp_path / "not_hdf5.h5")
    assert not is_original_format(tmp_path / "missing.h5")


def test_rays_mismatch(tmp_path, model):
    write_original(tmp_path / "probabilities.h5", n=10, n_rays=64)
    with pytest.raises(UserError, match="rays mismatch: model test_model has 96 rays, file has 64"):
        index_original_file(tmp_path / "probabilities.h5", tmp_path / "prediction.h5", model)
    assert not (tmp_path / "prediction.h5").exists()


@pytest.mark.parametrize("missing", ["prob", "dist", "points", "shape_inst"])
def test_missing_dataset(tmp_path, model, missing):
    write_original(tmp_path / "probabilities.h5", n=10, skip=(missing,))
    with pytest.raises(UserError, match=f"probabilities.h5: dataset '{missing}'.*got no {missing}"):
        index_original_file(tmp_path / "probabilities.h5", tmp_path / "prediction.h5", model)


def test_inconsistent_row_counts(tmp_path, model):
    src = tmp_path / "probabilities.h5"
    write_original(src, n=10)
    with h5py.File(src, "a") as f:
        del f["points"]
        f["points"] = np.zeros((9, 3), int)
    with pytest.raises(UserError, match="dataset 'points': expected 10 rows .*got 9"):
        index_original_file(src, tmp_path / "prediction.h5", model)


@pytest.mark.parametrize("shape_inst", [(40, 90), (40, 0, 70), (40.5, 90, 70)])
def test_bad_shape_inst(tmp_path, model, shape_inst):
    src = tmp_path / "probabilities.h5"
    write_original(src, n=10)
    with h5py.File(src, "a") as f:
        del f["shape_inst"]
        f["shape_inst"] = np.array(shape_inst)
    with pytest.raises(UserError, match="dataset 'shape_inst': expected 3 positive integers"):
        index_original_file(src, tmp_path / "prediction.h5", model)


def test_point_outside_image(tmp_path, model):
    src, dst = tmp_path / "probabilities.h5", tmp_path / "prediction.h5"
    write_original(src, n=2000)
    with h5py.File(src, "a") as f:
        f["points"][1500] = (3, IMAGE_SHAPE[1], 5)
    with pytest.raises(UserError, match=r"dataset 'points': .*got \(3, 90, 5\) at row 1500"):
        index_original_file(src, dst, model, rows_per_read=ROWS_PER_READ)
    assert not dst.exists() and not dst.with_name(dst.name + ".tmp").exists()
