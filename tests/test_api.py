"""The public Python API: the same results as the scripts, arguments checked before any work."""
import json

import h5py
import numpy as np
import pytest
import tifffile

import stardist_hpc
from stardist_hpc import (
    UserError,
    open_candidates,
    predict_candidates,
    read_objects,
    segment_candidates,
)
from stardist_hpc.synthetic import demo_candidate_file, nuclei_volume

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

#: a small image and a block shape that cuts it into several blocks.
IMAGE_SHAPE, BLOCK_SHAPE = (16, 64, 64), (16, 32, 32)


@pytest.fixture(scope="module")
def image():
    return nuclei_volume(IMAGE_SHAPE, 8, seed=21)[0]


def _datasets(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("prob", "dist", "points")}, dict(f.attrs)


def test_predict_from_an_array_equals_predict_from_its_file(tmp_path, image, demo_model):
    # an ImageJ TIFF of 2 x 0.5 x 0.25 um voxels (resolution: pixels per unit along x, y)
    tifffile.imwrite(tmp_path / "image.tif", image, imagej=True, resolution=(4.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    from_file = predict_candidates(tmp_path / "image.tif", "models/demo", tmp_path / "a.h5",
                                   block_shape=BLOCK_SHAPE, show_progress=False)
    # a loaded model and an array: nothing read from disk but the weights already loaded
    from_array = predict_candidates(image, demo_model, tmp_path / "b.h5", voxel_size=(1, 2, 3),
                                    block_shape=BLOCK_SHAPE, show_progress=False)
    (a, a_attrs), (b, b_attrs) = _datasets(tmp_path / "a.h5"), _datasets(tmp_path / "b.h5")
    assert from_file.candidates == from_array.candidates > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert a_attrs["software_version"] == stardist_hpc.__version__
    parameters = json.loads(a_attrs["parameters"])
    assert parameters["prediction"]["block_shape"] == list(BLOCK_SHAPE)
    assert b_attrs["image_path"] == "<array>"
    assert tuple(a_attrs["voxel_size"]) == (2.0, 0.5, 0.25)
    assert tuple(b_attrs["voxel_size"]) == (1.0, 2.0, 3.0)
    assert a_attrs["voxel_unit"] == b_attrs["voxel_unit"] == "micrometer"


@pytest.mark.parametrize("arguments, message", [
    ({"block_shape": (0, 32, 32)}, "'block_shape[0]': expected an integer >= 1"),
    ({"prob_thresh": 1.5}, "'prob_thresh': expected a number between 0 and 1"),
    ({"normalize": {"pmin": 1, "pmx": 99}}, "unknown config key 'normalize.pmx'"),
    ({"model": object()}, "model: expected a model folder path or a StarDist3D model"),
    ({"image": [[1, 2], [3, 4]]}, "image: expected a path or an array-like"),
    ({"image": np.zeros((4, 4))}, "expected a 3D image"),
    ({"model": "models/nowhere"}, "model folder"),
    ({"voxel_size": (0, 1, 1)}, "'image.voxel_size[0]': expected a number > 0"),
])
def test_predict_checks_arguments_before_any_work(tmp_path, image, arguments, message):
    call = {"image": image, "model": "models/demo", "output": tmp_path / "out.h5", **arguments}
    with pytest.raises(UserError) as error:
        predict_candidates(call.pop("image"), call.pop("model"), call.pop("output"), **call)
    assert message in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_segment_from_python_equals_the_script(tmp_path, dask_client):
    import yaml

    import hpc_prediction
    candidates = demo_candidate_file(tmp_path / "prediction.h5", n_nuclei=4)
    summary = segment_candidates(candidates, tmp_path / "api" / "label.h5",
                                 client=dask_client, tile_shape=(None, 16, 16),
                                 chunk_shape=(8, 1000, 20), show_progress=False)
    config = tmp_path / "hpc.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"prediction": "prediction.h5"},
        "output": {"labels": "cli/label.h5", "work_dir": "cli/work"},
        "nms": {"tile_shape": [None, 16, 16]}, "labeling": {"chunk_shape": [8, 1000, 20]},
        "cluster": {"local": {"n_workers": 1}}}))
    assert hpc_prediction.main([str(config)]) == 0
    with h5py.File(summary.labels, "r") as api, h5py.File(tmp_path / "cli/label.h5", "r") as cli:
        np.testing.assert_array_equal(api["labels"][()], cli["labels"][()])
        assert api["labels"].chunks == (8, 48, 20)   # the chunk shape is clipped to the image
        assert api.attrs["nms_backend"] == "fast" and api.attrs["labeling_backend"] == "stardist"
        assert api.attrs["software_version"] == stardist_hpc.__version__
        assert json.loads(api.attrs["parameters"])["tile_shape"] == [None, 16, 16]
    objects = read_objects(summary.labels)
    assert summary.n_objects == len(objects) == 4
    assert (tmp_path / "api" / "work" / "run.json").exists()   # default work_dir: beside labels


@pytest.mark.parametrize("arguments, message", [
    ({"backend": "Fast"}, "'nms.backend': expected one of 'stardist', 'fast'"),
    ({"labeling_backend": "exact"}, "'labeling.backend': expected one of"),
    ({"chunk_shape": (8, 0, 8)}, "'labeling.chunk_shape[1]': expected an integer >= 1"),
    ({"tile_shape": (8, 8)}, "'nms.tile_shape': expected a list of three"),
    ({"nms_thresh": -1}, "'nms.thresh': expected a number between 0 and 1"),
    ({"halo": "big"}, "'nms.halo': expected 'auto' or a list of three"),
    ({"model": object()}, "model: expected the path of a model folder or None"),
    ({"cluster": {"mode": "pbs"}}, "'cluster.mode': expected one of 'local', 'slurm'"),
    ({"labels": "prediction.h5"}, "the file of input.prediction"),
    ({"storage_shape": (8, 0, 8)}, "'output.chunk_shape[1]': expected an integer >= 1"),
    ({"ome_zarr": "prediction.h5"}, "'output.ome_zarr': expected the path of a directory"),
])
def test_segment_checks_arguments_before_any_work(tmp_path, arguments, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    candidates = demo_candidate_file(tmp_path / "prediction.h5")
    before = sorted(tmp_path.iterdir())
    call = {"labels": tmp_path / "label.h5", **arguments}
    with pytest.raises(UserError) as error:
        segment_candidates(candidates, call.pop("labels"), **call)
    assert message in str(error.value)
    assert sorted(tmp_path.iterdir()) == before


def test_readers_name_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="expected the path of a candidate file"):
        open_candidates(3)
    with pytest.raises(UserError, match="does not exist"):
        read_objects(tmp_path / "label.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="no 'objects' table"):
        read_objects(tmp_path / "other.h5")
