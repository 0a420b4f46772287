"""The GPU step: block-wise candidates equal whole-image ``predict_sparse`` candidates."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stardist_hpc.io.candidates import CandidateFile, CandidateMeta, CandidateWriter
from stardist_hpc.io.image import open_volume
from stardist_hpc.predict.normalization import percentile_normalization
from stardist_hpc.predict.step import (
    Network,
    auto_n_tiles,
    network_geometry,
    plan_blocks,
    predict_volume,
)

REPO = Path(__file__).resolve().parents[1]
#: network outputs agree to this tolerance between block-wise and whole-image calls
#: (the convolutions are evaluated in a different order).
PROB_ATOL, DIST_ATOL = 1e-4, 1e-3
#: a candidate whose prob is this close to the threshold may flip between the two calls
THRESH_MARGIN = 1e-4


def _blockwise(model, image_section, tmp_path, block_shape, max_tile_voxels, prob_thresh):
    meta = CandidateMeta(image_shape=(0, 0, 0), rays_json=_rays_json(model), grid=(1, 2, 2),
                         prob_thresh=prob_thresh, nms_thresh=0.3)
    with open_volume(image_section) as volume:
        norm = percentile_normalization(volume, 1.0, 99.8, sample_size=10**6)
        with CandidateWriter(tmp_path / "c.h5", meta) as writer:
            predict_volume(Network(model), volume, norm, writer, block_shape=block_shape,
                           prob_thresh=prob_thresh, n_tiles=None,
                           max_tile_voxels=max_tile_voxels)
        whole = norm.apply(volume.read((0, 0, 0), volume.shape))
    with h5py.File(tmp_path / "c.h5") as f:
        return whole, f["prob"][()], f["dist"][()], f["points"][()]


def _image_shape(image_section):
    """The (z, y, x) shape of an image, for a candidate file a reader accepts."""
    with open_volume(image_section) as volume:
        return volume.shape


def _rays_json(model):
    import json
    return json.dumps(model.config.rays_json)


def _by_point(prob, dist, points):
    order = np.lexsort(points.T[::-1])
    return prob[order], dist[order], points[order]


@pytest.mark.parametrize("block_shape, max_tile_voxels", [
    ((16, 48, 48), 10**7), ((20, 40, 56), 10**7), ((64, 256, 256), 10**7),
    ((64, 256, 256), 100_000),    # tiled inside the block by StarDist
])
def test_blockwise_equals_whole_image(demo_model, small_nuclei_tif, tmp_path, block_shape,
                                      max_tile_voxels):
    prob_thresh = demo_model.thresholds.prob
    whole, prob, dist, points = _blockwise(demo_model, small_nuclei_tif, tmp_path, block_shape,
                                           max_tile_voxels, prob_thresh)
    reference = demo_model.predict_sparse(whole, prob_thresh=prob_thresh)
    _assert_same_candidates(reference, (prob, dist, points), prob_thresh)


def _assert_same_candidates(reference, candidates, prob_thresh):
    """Same points, prob and dist up to the convolutions' rounding (see PROB_ATOL)."""
    (ref_prob, ref_dist, ref_points), (prob, dist, points) = reference, candidates
    ref = {tuple(p): i for i, p in enumerate(ref_points)}
    got = {tuple(p): i for i, p in enumerate(points)}
    assert len(got) == len(points), "a point was predicted twice"
    only_ref = [ref[p] for p in set(ref) - set(got)]
    only_got = [got[p] for p in set(got) - set(ref)]
    flipped = np.concatenate([ref_prob[only_ref], prob[only_got]])
    assert np.all(np.abs(flipped - prob_thresh) < THRESH_MARGIN), \
        f"{len(only_ref)} candidates missing, {len(only_got)} extra"
    common = sorted(set(ref) & set(got))
    i_ref, i_got = [ref[p] for p in common], [got[p] for p in common]
    np.testing.assert_allclose(prob[i_got], ref_prob[i_ref], atol=PROB_ATOL)
    np.testing.assert_allclose(dist[i_got], ref_dist[i_ref], atol=DIST_ATOL)
    assert len(common) > 100


def test_auto_n_tiles_bounds_the_voxels_of_one_call():
    context = (28, 48, 48)
    assert auto_n_tiles((64, 256, 256), context, 64 * 256 * 256) == (1, 1, 1)
    n_tiles = auto_n_tiles((120, 352, 352), context, 64 * 256 * 256)
    tile = [min(r, -(-r // n) + 2 * c) for r, c, n in zip((120, 352, 352), context, n_tiles)]
    assert np.prod(tile) <= 64 * 256 * 256
    assert auto_n_tiles((8, 8, 8), context, 1) == (8, 8, 8)   # cannot get under: thinnest


def test_block_cores_partition_the_image(demo_model):
    geometry = network_geometry(demo_model, (37, 91, 117))
    covered = np.zeros((37, 91, 117), np.uint8)
    for plan in plan_blocks(geometry, (16, 40, 40)):
        covered[tuple(slice(lo, hi) for lo, hi in zip(plan.core_lo, plan.core_hi))] += 1
        assert all(lo % d == 0 and hi % d == 0 for lo, hi, d in
                   zip(plan.read_lo, plan.read_hi, geometry.div_by))
    assert np.all(covered == 1)


def test_a_run_interrupted_after_its_last_block_only_renames(demo_model, small_nuclei_tif,
                                                             tmp_path):
    meta = CandidateMeta(image_shape=tuple(_image_shape(small_nuclei_tif)),
                         rays_json=_rays_json(demo_model), grid=(1, 2, 2), prob_thresh=0.5,
                         nms_thresh=0.3)
    settings = {"block_shape": (16, 48, 48), "prob_thresh": 0.5, "n_tiles": None,
                "max_tile_voxels": 10**7}
    path = tmp_path / "c.h5"
    with open_volume(small_nuclei_tif) as volume:
        norm = percentile_normalization(volume, 1.0, 99.8, sample_size=10**6)
        with pytest.raises(KeyboardInterrupt):
            with CandidateWriter(path, meta, "key") as writer:
                first = predict_volume(Network(demo_model), volume, norm, writer, **settings)
                raise KeyboardInterrupt   # after the last block, before the rename
        with CandidateWriter(path, meta, "key") as writer:
            again = predict_volume(Network(demo_model), volume, norm, writer, **settings)
    assert writer.n_blocks == first.blocks == again.blocks
    assert CandidateFile(path).n_candidates == first.candidates == again.candidates
    assert again.network_seconds == 0


def test_cli_writes_a_complete_indexed_candidate_file(small_nuclei_tif, tmp_path):
    from local_prediction import main

    config = tmp_path / "local.yaml"
    config.write_text(f"image: {{path: {small_nuclei_tif.path}}}\n"
                      f"model: {{basedir: {REPO / 'models'}, name: demo}}\n"
                      "prediction: {block_shape: [20, 48, 64]}\n"
                      "output: {path: out/prediction.h5}\n")
    assert main([str(config)]) == 0
    candidates = CandidateFile(tmp_path / "out" / "prediction.h5")
    assert candidates.meta.image_shape == (37, 91, 117)
    assert candidates.meta.model_name == "demo" and candidates.meta.n_rays == 96
    assert candidates.meta.norm_hi > candidates.meta.norm_lo
    assert not (tmp_path / "out" / "prediction.h5.tmp").exists()
    blocks = candidates.blocks
    assert blocks["row_start"][0] == 0 and blocks["row_stop"][-1] == candidates.n_candidates
    np.testing.assert_array_equal(blocks["row_start"][1:], blocks["row_stop"][:-1])
    for b in blocks:
        lo, hi = (b["z0"], b["y0"], b["x0"]), (b["z1"], b["y1"], b["x1"])
        rows, *_ = candidates.read_box(lo, hi)
        np.testing.assert_array_equal(rows, np.arange(b["row_start"], b["row_stop"]))


def _owned_reference(points, plan, geometry):
    """The ownership rule spelled out on global points: in the core, in the image, and
    outside StarDist's border of BORDER_CELLS grid cells of the padded image."""
    from stardist_hpc.predict.step import BORDER_CELLS
    cells = points // np.asarray(geometry.grid)
    last_cell = np.asarray(geometry.padded_shape) // np.asarray(geometry.grid) - BORDER_CELLS
    owned = np.all((points >= plan.core_lo) & (points < plan.core_hi), axis=1)
    owned &= np.all((cells >= BORDER_CELLS) & (cells < last_cell), axis=1)
    return owned & np.all(points < np.asarray(geometry.shape), axis=1)


@pytest.mark.parametrize("n_tiles", [(1, 1, 1), (2, 3, 2)])
def test_sparse_post_processing_equals_predict_sparse_bit_for_bit(demo_model, small_nuclei,
                                                                  n_tiles):
    from stardist_hpc.predict.normalization import Normalization
    from stardist_hpc.predict.step import (
        LaneClock,
        block_candidates,
        owned_cells,
        read_block,
        tile_candidates,
    )

    image = small_nuclei[0]
    network, prob_thresh = Network(demo_model), demo_model.thresholds.prob
    geometry = network.geometry(image.shape)
    norm = Normalization(1.0, 99.8, *np.percentile(image, [1.0, 99.8]))
    volume = type("V", (), {"shape": image.shape, "read": staticmethod(
        lambda lo, hi: image[tuple(slice(l, h) for l, h in zip(lo, hi))])})
    plans = plan_blocks(geometry, (16, 48, 48))
    for plan in (plans[0], plans[-1]):   # a first and a last, reflect-padded block
        block = read_block(volume, plan, norm, LaneClock())
        owned = owned_cells(plan, geometry)
        parts = [tile_candidates(network(tile), s_src, s_dst, owned, prob_thresh)
                 for tile, s_src, s_dst in network.tiles(block, n_tiles)]
        prob, dist, points, prob_class = block_candidates(parts, plan, geometry.grid)
        assert prob_class is None   # a single-class model
        ref_prob, ref_dist, ref_points = demo_model.predict_sparse(
            block, prob_thresh=prob_thresh, axes="ZYX", n_tiles=n_tiles,
            show_tile_progress=False, b=0)
        ref_points = ref_points + np.asarray(plan.read_lo)
        owned = _owned_reference(ref_points, plan, geometry)
        assert owned.sum() > 10
        np.testing.assert_array_equal(points, ref_points[owned])
        assert prob.tobytes() == ref_prob[owned].astype(np.float32).tobytes()
        assert dist.tobytes() == ref_dist[owned].astype(np.float32).tobytes()


def _uint16_tif(path, shape, seed):
    """A synthetic nuclei volume written as uint16 TIFF (as the demo image); its ImageSection."""
    from stardist_hpc.config import ImageSection
    from stardist_hpc.demo import write_uint16_tiff
    from stardist_hpc.synthetic import nuclei_volume

    image, _ = nuclei_volume(shape, round(NUCLEI_PER_VOXEL * np.prod(shape)), seed=seed)
    write_uint16_tiff(path, image)
    return ImageSection(path=path, dataset=None, channel=0, axes=None)


#: nuclei per voxel of the uint16 test volumes (about the demo image's density).
NUCLEI_PER_VOXEL = 4e-5


def test_exact_percentiles_equal_numpy_of_the_whole_volume(tmp_path, monkeypatch):
    from stardist_hpc.predict import normalization

    monkeypatch.setattr(normalization, "HISTOGRAM_SLAB_VOXELS", 3 * 91 * 117)   # many slabs
    section = _uint16_tif(tmp_path / "v.tif", (37, 91, 117), seed=2)
    percentiles = [0.0, 1.0, 3.7, 50.0, 99.8, 99.99, 100.0]
    with open_volume(section) as volume:
        counts, offset = normalization.volume_histogram(volume)
        whole = volume.read((0, 0, 0), volume.shape)
    got = normalization.histogram_percentiles(counts, offset, whole.dtype, percentiles)
    assert got.tobytes() == np.percentile(whole, percentiles).tobytes()


def test_blockwise_exact_equals_predict_sparse_of_csbdeep_normalize(demo_model, tmp_path):
    """Over 4M voxels (where the sample of sample_size voxels is no longer the whole volume)."""
    from csbdeep.utils import normalize

    from stardist_hpc.config import NormalizeSection
    from stardist_hpc.predict.normalization import configured_normalization

    section = _uint16_tif(tmp_path / "big.tif", (64, 256, 264), seed=5)
    prob_thresh = demo_model.thresholds.prob
    meta = CandidateMeta(image_shape=(0, 0, 0), rays_json=_rays_json(demo_model),
                         grid=(1, 2, 2), prob_thresh=prob_thresh, nms_thresh=0.3)
    with open_volume(section) as volume:
        norm = configured_normalization(volume, NormalizeSection())
        with CandidateWriter(tmp_path / "c.h5", meta) as writer:
            predict_volume(Network(demo_model), volume, norm, writer, block_shape=(64, 128, 264),
                           prob_thresh=prob_thresh, n_tiles=None, max_tile_voxels=10**8)
        image = volume.read((0, 0, 0), volume.shape)
    assert norm.method == "exact"
    whole = normalize(image, 1, 99.8, axis=(0, 1, 2))
    assert norm.apply(image).tobytes() == whole.tobytes()
    with h5py.File(tmp_path / "c.h5") as f:
        candidates = f["prob"][()], f["dist"][()], f["points"][()]
    reference = demo_model.predict_sparse(whole, prob_thresh=prob_thresh)
    _assert_same_candidates(reference, candidates, prob_thresh)
