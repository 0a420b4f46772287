"""Multi-class and multi-channel StarDist3D models: block-wise == StarDist's predict_instances.

The two tiny models under tests/models (made by tests/models/make_tiny_models.py) are run
through both steps, block-wise with several blocks, NMS tiles and label chunks, and compared
with StarDist's own whole-image ``predict_sparse`` and ``predict_instances`` on
``normalize(img, 1, 99.8, axis=(0, 1, 2))``: the same candidates (class probabilities
included), the same labels, and for the multi-class model the same ``class_id`` and class
probabilities per object.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stardist_hpc import open_candidates, predict_candidates, read_objects, segment_candidates
from stardist_hpc.errors import UserError
from stardist_hpc.io.model_files import read_model_info
from tests.models.make_tiny_models import N_CHANNELS, N_CLASSES, PMAX, PMIN, sample_image

MODELS = Path(__file__).resolve().parent / "models"
#: blocks, NMS tiles and label chunks that split the (24, 64, 80) sample image several ways.
BLOCK_SHAPE = (16, 32, 48)
TILE_SHAPE = (None, 32, 32)
CHUNK_SHAPE = (16, 32, 32)


def _stardist(model, image):
    """StarDist's own candidates (sorted by point) and instances of the whole image."""
    from csbdeep.utils import normalize
    x = normalize(image, PMIN, PMAX, axis=(0, 1, 2))
    *candidates, points = model.predict_sparse(x)
    labels, details = model.predict_instances(x)
    order = np.lexsort(points.T[::-1])
    return [c[order] for c in (*candidates, points)], labels, details


def _pipeline(tmp_path, client, image, model_dir, **kwargs):
    """Both steps of this package on ``image``; returns the candidate file and label.h5."""
    candidates, labels = tmp_path / "prediction.h5", tmp_path / "label.h5"
    predict_candidates(image, model_dir, candidates, block_shape=BLOCK_SHAPE,
                       show_progress=False, **kwargs)
    segment_candidates(candidates, labels, backend="stardist", tile_shape=TILE_SHAPE,
                       chunk_shape=CHUNK_SHAPE, client=client, show_progress=False)
    return candidates, labels


def _file_candidates(path):
    """prob, dist, [prob_class], points of a candidate file, sorted by point."""
    file = open_candidates(path)
    with h5py.File(path, "r") as f:
        names = ["prob", "dist"] + (["prob_class"] if file.meta.n_classes else []) + ["points"]
        columns = [f[name][()] for name in names]
    order = np.lexsort(columns[-1].T[::-1])
    return [c[order] for c in columns]


def _assert_same_labels(path, expected):
    """label.h5 holds ``expected`` up to StarDist's sequential relabelling of the ids."""
    with h5py.File(path, "r") as f:
        labels = f["labels"][()]
    assert np.array_equal(labels > 0, expected > 0)
    pairs = np.unique(np.stack([labels[labels > 0], expected[expected > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    return labels


@pytest.fixture(scope="module")
def tiny_models():
    """The two tiny models, loaded once (imports TensorFlow)."""
    from stardist_hpc.predict.step import load_model
    return {name: load_model(MODELS / name) for name in ("multiclass", "multichannel")}


def test_multiclass_model_equals_predict_instances(tmp_path, dask_client, tiny_models):
    model = tiny_models["multiclass"]
    image, _ = sample_image()
    expected_candidates, expected_labels, details = _stardist(model, image)
    candidates, labels = _pipeline(tmp_path, dask_client, image, MODELS / "multiclass")

    assert open_candidates(candidates).meta.n_classes == N_CLASSES
    found = _file_candidates(candidates)
    assert found[2].shape == (len(found[0]), N_CLASSES + 1)
    for ours, theirs in zip(found, expected_candidates):
        np.testing.assert_array_equal(ours, theirs)

    _assert_same_labels(labels, expected_labels)
    objects = read_objects(labels)
    # ids are 1 = most probable; StarDist's details list the objects by decreasing prob
    by_prob = np.argsort(-details["prob"], kind="stable")
    np.testing.assert_array_equal(objects["prob"], details["prob"][by_prob])
    np.testing.assert_array_equal(objects["class_id"], details["class_id"][by_prob])
    class_prob = np.stack([objects[f"prob_class_{k}"] for k in range(N_CLASSES + 1)], axis=1)
    np.testing.assert_array_equal(class_prob, details["class_prob"][by_prob])


def test_multichannel_model_equals_predict_instances(tmp_path, dask_client, tiny_models):
    model = tiny_models["multichannel"]
    image, _ = sample_image(N_CHANNELS)
    expected_candidates, expected_labels, _ = _stardist(model, image)
    # stored channel-first with the channels swapped: image.channel puts them in model order;
    # StarDist tiles inside the blocks
    stored = np.ascontiguousarray(np.moveaxis(image, -1, 0)[::-1])
    candidates, labels = _pipeline(tmp_path, dask_client, stored, model,
                                   channel=[1, 0], axes="CZYX", n_tiles=(1, 2, 2))

    for ours, theirs in zip(_file_candidates(candidates), expected_candidates):
        np.testing.assert_array_equal(ours, theirs)
    _assert_same_labels(labels, expected_labels)
    assert "class_id" not in read_objects(labels).dtype.names


def test_a_channel_count_that_does_not_fit_is_refused_before_tensorflow(tmp_path, monkeypatch):
    import stardist_hpc.predict.step as step

    def no_loading(_model_dir):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(step, "load_model", no_loading)
    image = np.zeros((2, 8, 16, 16), np.uint16)
    with pytest.raises(UserError, match=r"image\.channel: model multichannel takes 2 "
                                        r"channel\(s\).*got 1 \(0\)"):
        predict_candidates(image, MODELS / "multichannel", tmp_path / "p.h5", axes="CZYX")
    with pytest.raises(UserError, match=r"model demo takes 1 channel\(s\).*got 2 \(\[0, 1\]\)"):
        predict_candidates(image, MODELS.parent.parent / "models" / "demo", tmp_path / "p.h5",
                           channel=[0, 1], axes="CZYX")
    assert not (tmp_path / "p.h5").exists()


def test_each_channel_is_normalised_as_csbdeep_normalizes_a_zyxc_image():
    from csbdeep.utils import normalize

    from stardist_hpc.config import NormalizeSection
    from stardist_hpc.io.image import array_volume
    from stardist_hpc.predict.normalization import configured_normalization
    image, _ = sample_image(N_CHANNELS)
    with array_volume(image, channel=(0, 1), axes="ZYXC") as volume:
        normalization = configured_normalization(volume, NormalizeSection())
        normalized = normalization.apply(volume.read((0, 0, 0), volume.shape))
    expected = np.percentile(image, [PMIN, PMAX], axis=(0, 1, 2))
    assert normalization.method == "exact" and len(normalization.lo) == N_CHANNELS
    np.testing.assert_array_equal([normalization.lo, normalization.hi], expected)
    np.testing.assert_array_equal(normalized, normalize(image, PMIN, PMAX, axis=(0, 1, 2)))


def test_model_info_reads_classes_and_channels_from_config_json():
    assert read_model_info(MODELS, "multiclass").n_classes == N_CLASSES
    assert read_model_info(MODELS, "multichannel").n_channel_in == N_CHANNELS
    demo = read_model_info(MODELS.parent.parent / "models", "demo")
    assert (demo.n_classes, demo.n_channel_in) == (0, 1)
