"""The HPC step end to end: label.h5 equals StarDist's single-process result."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import zarr
from conftest import (
    SYNTHETIC_NMS_THRESH,
    SYNTHETIC_RAYS,
    SingleProcessResult,
    ellipsoid_dist,
    write_candidate_file,
)
from scipy import ndimage

from stardist_hpc.config import HpcConfig, load
from stardist_hpc.errors import UserError
from stardist_hpc.geometry.tiling import Grid
from stardist_hpc.io.candidates import CandidateFile
from stardist_hpc.segment import step as hpc
from stardist_hpc.segment.cluster import run_in_process
from stardist_hpc.segment.render import batch_chunks

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

REPO = Path(__file__).resolve().parents[1]
LABELS = "labels"


def _config(tmp_path, candidate_path, *, tile_shape=(None, 24, 24), chunk_shape=(8, 32, 32),
            model=None, labeling_backend="stardist", **nms):
    """An HpcConfig as hpc_prediction.py loads it from YAML."""
    raw = {"input": {"prediction": str(candidate_path)},
           "model": {"basedir": None if model is None else str(model.parent),
                     "name": None if model is None else model.name},
           "output": {"labels": str(tmp_path / "label.h5"), "work_dir": str(tmp_path / "work")},
           "nms": {"tile_shape": list(tile_shape), **nms},
           "labeling": {"chunk_shape": list(chunk_shape), "backend": labeling_backend},
           "cluster": {"mode": "local", "local": {"n_workers": 2, "threads_per_worker": 1}}}
    path = tmp_path / "hpc.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load(HpcConfig, path)


def _segment(config, execute=run_in_process):
    """Run the stages of ``config`` in this process with ``execute``."""
    hpc.segment(hpc.resolve_params(config, CandidateFile(config.input.prediction)), execute)


def _read_labels(path):
    with h5py.File(path, "r") as f:
        return f[LABELS][()], f["objects"][()]


def _first_differences(actual, expected, n=5):
    where = np.argwhere(actual != expected)
    listed = ", ".join(f"{tuple(p)}: {actual[tuple(p)]} != {expected[tuple(p)]}"
                       for p in where[:n])
    return f"{len(where)} voxel(s) differ; first: {listed}"


def _assert_objects_match(objects, reference, candidate_path):
    """The objects table describes the reference's rendered voxels, id by id."""
    labels, n = reference.labels, len(reference.rows)
    with h5py.File(candidate_path, "r") as f:
        prob = f["prob"][()]
    np.testing.assert_array_equal(objects["id"], np.arange(1, n + 1))
    np.testing.assert_array_equal(objects["prob"], prob[reference.rows])
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    np.testing.assert_array_equal(objects["voxel_count"], counts)
    rendered = np.flatnonzero(counts)
    centroids = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, rendered + 1))
    boxes = ndimage.find_objects(labels)
    for axis, name in enumerate("zyx"):
        np.testing.assert_allclose(objects[f"centroid_{name}"][rendered], centroids[:, axis])
        np.testing.assert_array_equal(objects[f"{name}0"][rendered],
                                      [boxes[i][axis].start for i in rendered])
        np.testing.assert_array_equal(objects[f"{name}1"][rendered],
                                      [boxes[i][axis].stop for i in rendered])


@pytest.mark.parametrize("backend", ["stardist", "fast"])
@pytest.mark.parametrize("tile_shape, chunk_shape", [
    ((None, 24, 24), (8, 32, 32)),
    ((7, 13, 19), (5, 17, 23)),
    ((None, None, None), (3, 7, 64)),   # chunks wider than the image are clipped
])
def test_labels_equal_single_process(tmp_path, nuclei_candidates, nuclei_references, tile_shape,
                                     chunk_shape, backend):
    config = _config(tmp_path, nuclei_candidates, tile_shape=tile_shape, chunk_shape=chunk_shape,
                     backend=backend)
    _segment(config)
    labels, objects = _read_labels(config.output.labels)
    reference = nuclei_references[backend]
    assert labels.dtype == np.uint32
    assert np.array_equal(labels, reference.labels), _first_differences(labels, reference.labels)
    _assert_objects_match(objects, reference, nuclei_candidates)


def test_fast_labeling_renders_the_same_voxels_here(tmp_path, nuclei_candidates,
                                                   nuclei_references):
    config = _config(tmp_path, nuclei_candidates, tile_shape=(7, 13, 19), chunk_shape=(5, 17, 23),
                     labeling_backend="fast")
    _segment(config)
    labels, _ = _read_labels(config.output.labels)
    expected = nuclei_references["fast"].labels
    assert np.array_equal(labels, expected), _first_differences(labels, expected)


def test_chain_across_small_tiles_equals_stardist(tmp_path, chain_candidates):
    config = _config(tmp_path, chain_candidates, tile_shape=(None, 8, 7),
                     chunk_shape=(3, 5, 11), backend="stardist")
    _segment(config)
    labels, _ = _read_labels(config.output.labels)
    expected = SingleProcessResult(chain_candidates).labels
    assert np.array_equal(labels, expected), _first_differences(labels, expected)


def _tiny_grid_candidates(path):
    """One tiny polyhedron every 4 voxels of a 40x400x400 volume: 80000 objects survive."""
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(SYNTHETIC_RAYS, anisotropy=(2, 1, 1))
    image_shape = (40, 400, 400)
    grid = np.mgrid[2:40:5, 2:400:4, 2:400:4].reshape(3, -1).T.astype(np.int32)
    dist = np.tile(ellipsoid_dist(rays, (0.8, 1.5, 1.5)), (len(grid), 1)).astype(np.float32)
    prob = np.random.default_rng(0).uniform(0.5, 1.0, len(grid)).astype(np.float32)
    return write_candidate_file(path, image_shape, rays, prob, dist, grid,
                                block_shape=(None, 100, 100))


def test_more_than_65535_objects_are_uint32(tmp_path):
    path = _tiny_grid_candidates(tmp_path / "prediction.h5")
    config = _config(tmp_path, path, tile_shape=(None, 200, 200), chunk_shape=(40, 200, 200))
    _segment(config)
    with h5py.File(config.output.labels, "r") as f:
        assert f[LABELS].dtype == np.uint32
        # more ids than 16 bits can hold: every one of them survives
        assert f[LABELS][()].max() == 80000 > 2**16 - 1
        assert len(f["objects"]) == 80000 == f.attrs["n_objects"]
        assert np.all(f["objects"]["voxel_count"] > 0)


def _stored_chunks(path):
    """Every stored chunk of the label dataset as its compressed bytes."""
    with h5py.File(path, "r") as f:
        dset = f[LABELS]
        return [dset.id.read_direct_chunk(dset.id.get_chunk_info(i).chunk_offset)[1]
                for i in range(dset.id.get_num_chunks())]


def test_resume_redoes_only_deleted_checkpoints(tmp_path, nuclei_candidates):
    config = _config(tmp_path, nuclei_candidates, chunk_shape=(8, 16, 16))
    _segment(config)
    first = _stored_chunks(config.output.labels), _read_labels(config.output.labels)[1]
    work = config.output.work_dir
    (work / "nms" / "round0" / "batch2.npz").unlink()
    rendered = sorted(int(p.stem) for p in (work / "chunks").glob("*.npz"))
    deleted_chunks = rendered[1], rendered[-1]
    for index in deleted_chunks:
        (work / "chunks" / f"{index}.npz").unlink()
    executed = []

    def recording_executor(function, argument_tuples, description):
        # the OME-Zarr tasks check their own markers (tests/test_outputs.py)
        if function.__name__ == "nms_tiles":   # (params, batch, tiles, ...)
            executed.extend((function.__name__, args[1]) for args in argument_tuples)
        elif not function.__module__.endswith("ome_zarr"):
            executed.extend((function.__name__, task.index) for args in argument_tuples
                            for task in args[1])
        return run_in_process(function, argument_tuples, description)

    _segment(config, recording_executor)
    assert sorted(executed) == [("nms_tiles", 2), *(("render_chunks", i) for i in deleted_chunks)]
    second = _stored_chunks(config.output.labels), _read_labels(config.output.labels)[1]
    assert second[0] == first[0]
    np.testing.assert_array_equal(second[1], first[1])


def test_labeling_tasks_write_the_ome_zarr_level_0_of_the_batches_they_render(
        tmp_path, nuclei_candidates):
    """A labeling task writes its batch's OME-Zarr level 0 from the bytes it compressed; a
    rerun copies the level 0 of the batches an earlier run rendered from their checkpoints.
    Level 0 equals label.h5 either way."""
    config = _config(tmp_path, nuclei_candidates, chunk_shape=(4, 8, 8))   # batches of chunks
    params = hpc.resolve_params(config, CandidateFile(config.input.prediction))
    copied = []

    def recording_executor(function, argument_tuples, description):
        if function.__name__ == "copy_base_chunks":   # (..., [(chunk index, stored), ...])
            copied.extend(args[-1][0][0] for args in argument_tuples)
        return run_in_process(function, argument_tuples, description)

    def level_0():
        return zarr.open_group(config.output.ome_zarr, mode="r")["labels/nuclei/0"][...]

    _segment(config, recording_executor)
    labels = _read_labels(config.output.labels)[0]
    assert copied == []
    np.testing.assert_array_equal(level_0(), labels)

    work = config.output.work_dir
    rendered = sorted(int(p.stem) for p in (work / "chunks").glob("*.npz"))
    batch_of = batch_chunks(Grid(params.image_shape, params.chunk_shape))
    firsts = sorted({min(i for i in rendered if batch_of[i] == batch_of[j]) for j in rendered})
    redone = firsts[1]
    assert sum(batch_of[i] == batch_of[redone] for i in rendered) > 1
    for index in rendered:
        if batch_of[index] == batch_of[redone]:
            (work / "chunks" / f"{index}.npz").unlink()
    _segment(config, recording_executor)
    assert copied == [first for first in firsts if first != redone]
    np.testing.assert_array_equal(level_0(), labels)


def test_an_ome_zarr_marker_of_another_batching_is_not_taken(tmp_path, nuclei_candidates):
    """A level-0 marker that names the first chunk of a batch but covers only that chunk (as
    an older version's, one per chunk) does not stand for the batch: a resumed run writes the
    batch's other chunk files."""
    from stardist_hpc.io.checkpoint import load_checkpoint, save_record
    from stardist_hpc.io.ome_zarr import WrittenChunks, _chunk_path, _covering, temporary_store
    config = _config(tmp_path, nuclei_candidates, chunk_shape=(4, 8, 8))
    _segment(config)
    labels = _read_labels(config.output.labels)[0]
    markers = config.output.work_dir / "ome_zarr" / "0"
    marker, record = max(((path, load_checkpoint(path, WrittenChunks, {}))
                          for path in markers.glob("*.npz")),
                         key=lambda item: len(item[1].chunk_lo))
    assert len(record.chunk_lo) > 1
    save_record(marker, record._replace(covers=_covering([record.task]),
                                        chunk_lo=record.chunk_lo[:1],
                                        chunk_crc=record.chunk_crc[:1]))
    # as if interrupted before the store was published, the batch's other files not written
    store = temporary_store(config.output.ome_zarr)
    config.output.ome_zarr.rename(store)
    level0 = store / "labels" / "nuclei" / "0"
    for lo in record.chunk_lo[1:]:
        _chunk_path(level0, lo, (4, 8, 8)).unlink()
    _segment(config)
    ome = zarr.open_group(config.output.ome_zarr, mode="r")["labels/nuclei/0"][...]
    np.testing.assert_array_equal(ome, labels)


def test_zero_candidates_give_background_only(tmp_path, in_process):
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(SYNTHETIC_RAYS, anisotropy=(2, 1, 1))
    path = write_candidate_file(tmp_path / "empty.h5", (9, 20, 30), rays,
                                np.zeros(0, np.float32),
                                np.zeros((0, SYNTHETIC_RAYS), np.float32),
                                np.zeros((0, 3), np.int32))
    summary = hpc.run(_config(tmp_path, path, tile_shape=(None, 8, 8)))
    labels, objects = _read_labels(tmp_path / "label.h5")
    assert summary.n_objects == 0 and labels.dtype == np.uint32
    assert labels.shape == (9, 20, 30) and not labels.any()
    assert len(objects) == 0


def _model_folder(tmp_path, n_rays, nms_thresh=SYNTHETIC_NMS_THRESH):
    """A StarDist3D model folder (JSON files only) with ``n_rays`` golden-spiral rays."""
    folder = tmp_path / "models" / f"rays{n_rays}"
    folder.mkdir(parents=True)
    rays_json = {"name": "Rays_GoldenSpiral", "kwargs": {"n": n_rays, "anisotropy": [2, 1, 1]}}
    folder.joinpath("config.json").write_text(json.dumps(
        {"n_dim": 3, "n_rays": n_rays, "grid": [1, 2, 2], "rays_json": rays_json}))
    folder.joinpath("thresholds.json").write_text(json.dumps({"prob": 0.5, "nms": nms_thresh}))
    return folder


def test_rays_mismatch_is_a_user_error(tmp_path, nuclei_candidates, in_process):
    config = _config(tmp_path, nuclei_candidates, model=_model_folder(tmp_path, 96))
    with pytest.raises(UserError, match="rays mismatch: model rays96 has 96 rays, prediction "
                                        "file has 32"):
        hpc.run(config)


def test_work_dir_of_another_run_starts_afresh(tmp_path, chain_candidates, in_process, caplog):
    hpc.run(_config(tmp_path, chain_candidates))
    (tmp_path / "work" / "notes.txt").write_text("a file of the user's")
    with caplog.at_level("WARNING"):
        hpc.run(_config(tmp_path, chain_candidates, thresh=0.5))
    assert "nms_thresh changed" in caplog.text and "starting afresh" in caplog.text
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    hpc.run(_config(fresh, chain_candidates, thresh=0.5))
    assert np.array_equal(_read_labels(tmp_path / "label.h5")[0],
                          _read_labels(fresh / "label.h5")[0])
    assert (tmp_path / "work" / "notes.txt").exists()


def test_changed_input_starts_afresh(tmp_path, chain_candidates, in_process, caplog):
    candidates = tmp_path / "candidates.h5"
    candidates.write_bytes(chain_candidates.read_bytes())
    hpc.run(_config(tmp_path, candidates))
    os.utime(candidates, ns=(0, 0))
    with caplog.at_level("WARNING"):
        hpc.run(_config(tmp_path, candidates))
    assert "input_mtime_ns changed" in caplog.text


def _one_candidate_per_point(path, out):
    """A copy of a candidate file keeping one candidate per point, as a network predicts them
    (the synthetic sets repeat points, which only the file row can then order)."""
    from stardist.rays3d import rays_from_json
    candidates = CandidateFile(path)
    rows, prob, dist, points = candidates.read_box((0, 0, 0), candidates.meta.image_shape)
    _, first = np.unique(points, axis=0, return_index=True)
    rays = rays_from_json(json.loads(candidates.meta.rays_json))
    return write_candidate_file(out, candidates.meta.image_shape, rays, prob[first],
                                dist[first], points[first])


def test_original_probabilities_file_equals_own_format(tmp_path, nuclei_candidates, in_process):
    own = _one_candidate_per_point(nuclei_candidates, tmp_path / "own.h5")
    original = tmp_path / "probabilities.h5"
    shuffled = np.random.default_rng(0).permutation(CandidateFile(own).n_candidates)
    with h5py.File(own, "r") as src, h5py.File(original, "w") as dst:
        for name in ("prob", "dist", "points"):
            dst[name] = src[name][()][shuffled]     # the original pipeline's arbitrary order
        dst["shape_inst"] = src.attrs["image_shape"]
    config = _config(tmp_path, original, model=_model_folder(tmp_path, SYNTHETIC_RAYS))
    hpc.run(config)
    labels, _ = _read_labels(config.output.labels)
    expected = SingleProcessResult(own, backend="fast").labels
    assert np.array_equal(labels, expected), _first_differences(labels, expected)


def test_an_in_process_run_imports_no_tensorflow(tmp_path, chain_candidates, in_process):
    before = set(sys.modules)
    hpc.run(_config(tmp_path, chain_candidates))
    assert not [m for m in set(sys.modules) - before if m.split(".")[0] == "tensorflow"]


@pytest.mark.parametrize("workers, threads", [(2, 1), (1, 2)])
def test_cli_on_a_local_cluster_equals_single_process_and_reruns_identically(
        tmp_path, nuclei_candidates, nuclei_references, workers, threads):
    """Also on a worker of 2 threads, whose tasks run in its task processes."""
    nuclei_reference = nuclei_references["fast"]   # the default backend
    config = _config(tmp_path, nuclei_candidates, tile_shape=(None, 16, 40),
                     chunk_shape=(16, 20, 20))
    # -X importtime is passed on to the worker processes too: nothing may import TensorFlow
    command = [sys.executable, "-X", "importtime", str(REPO / "hpc_prediction.py"),
               str(tmp_path / "hpc.yaml"), "--set", f"cluster.local.n_workers={workers}",
               "--set", f"cluster.local.threads_per_worker={threads}"]
    cli = subprocess.run(command, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "tensorflow" not in cli.stderr
    assert f"-> {len(nuclei_reference.rows)} objects" in cli.stderr
    with h5py.File(config.output.labels, "r") as f:   # plain h5py, no project code
        labels = f["data"][()]                        # the original pipeline's name
        assert f.get("data", getlink=True).path == "/labels"
        assert tuple(f.attrs["image_shape"]) == labels.shape
        assert f.attrs["n_objects"] == len(nuclei_reference.rows)
        assert f.attrs["nms_thresh"] == pytest.approx(SYNTHETIC_NMS_THRESH)
        assert json.loads(f.attrs["rays_json"])["kwargs"]["n"] == SYNTHETIC_RAYS
    assert np.array_equal(labels, nuclei_reference.labels), \
        _first_differences(labels, nuclei_reference.labels)
    first = _stored_chunks(config.output.labels)
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert _stored_chunks(config.output.labels) == first
