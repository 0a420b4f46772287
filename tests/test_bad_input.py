"""Bad input to both scripts: one line naming the file or key, exit code 2, no output file.

Every case builds its input in a fresh directory, runs the real script as a subprocess and
checks the contract that doc/troubleshooting.md describes: exit code 2, the last line of stderr
is the only error line and names the file or config key at fault and what was expected, no
traceback, and nothing at the output path. All but one case stop before TensorFlow is imported
(and every HPC-step case before a Dask cluster starts), so each takes about a second.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from stardist_hpc.synthetic import (
    DEFAULT_ANISOTROPY,
    SYNTHETIC_RAYS,
    random_centres,
    synthetic_candidates,
    write_candidate_file,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
LOCAL, HPC = "local_prediction.py", "hpc_prediction.py"
#: a tiny image, and the volume of the synthetic candidate files.
IMAGE_SHAPE = (8, 32, 32)
CANDIDATE_SHAPE = (8, 32, 32)
#: an ERROR line of the scripts' log format ("%H:%M:%S LEVEL message").
ERROR_LINE = re.compile(r"^\d\d:\d\d:\d\d ERROR ")
#: names of the two scripts' outputs and of their temporary files.
OUTPUT_NAMES = ("prediction.h5*", "label.h5*", "report.html*", "intensities.tsv*")


# ---------------------------------------------------------------------------------------------
# building inputs


def _tif(directory, name, array):
    """Write ``array`` as the TIFF file ``directory/name``."""
    with warnings.catch_warnings():  # tifffile warns about a TIFF of no pixels
        warnings.simplefilter("ignore", UserWarning)
        tifffile.imwrite(directory / name, array)
    return directory / name


def _image(directory, name="img.tif", shape=IMAGE_SHAPE, dtype=np.uint16):
    """A small TIFF image of random values (so that its percentiles differ)."""
    values = np.random.default_rng(0).uniform(0, 1000, shape)
    return _tif(directory, name, values.astype(dtype))


def _random_bytes(path):
    """A file of random bytes at ``path``, whatever its suffix promises."""
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    return path


def _truncate(path):
    """Cut a file in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _candidates(directory, name="candidates.h5", block_shape=(None, 32, 32)):
    """A small candidate file with SYNTHETIC_RAYS rays, as local_prediction.py writes it."""
    centres = random_centres(CANDIDATE_SHAPE, 3, seed=0)
    rays, prob, dist, points = synthetic_candidates(CANDIDATE_SHAPE, centres, seed=1)
    return write_candidate_file(directory / name, CANDIDATE_SHAPE, rays, prob, dist, points,
                                block_shape=block_shape)


MODEL_2D = '{"n_dim": 2, "n_rays": 32, "grid": [1, 1], "axes": "YXC"}'
DEMO_MODEL = {"basedir": str(MODELS), "name": "demo"}
#: the tiny two-channel model of tests/models (tests/models/make_tiny_models.py).
TWO_CHANNEL_MODEL = {"basedir": str(REPO / "tests" / "models"), "name": "multichannel"}
#: the model folder that `_broken_model` writes, relative to the config file.
BROKEN_MODEL = {"basedir": "models", "name": "broken"}


def local_config(image="img.tif", **sections):
    """A config of local_prediction.py with the demo model and the default output path."""
    image = {"path": image} if isinstance(image, str) else image
    return {"image": image, "model": DEMO_MODEL, **sections}


def hpc_config(**sections):
    """A config of hpc_prediction.py on candidates.h5 without a model, on one local worker."""
    return {"input": {"prediction": "candidates.h5"}, "model": {"basedir": None, "name": None},
            "nms": {"tile_shape": [None, 16, 16]}, "labeling": {"chunk_shape": [8, 16, 16]},
            "cluster": {"mode": "local", "local": {"n_workers": 1}}, **sections}


def _after(config, *prepare):
    """Setup calling each of ``prepare`` on the directory, then returning ``config``."""
    def setup(directory):
        for function in prepare:
            function(directory)
        return config
    return setup


def _with_image(**sections):
    """Setup writing img.tif, then the GPU-step config with ``sections``."""
    return _after(local_config(**sections), _image)


def _with_candidates(**sections):
    """Setup writing candidates.h5, then the HPC-step config with ``sections``."""
    return _after(hpc_config(**sections), _candidates)


# ---------------------------------------------------------------------------------------------
# preparations: each writes one bad input into the directory


def _file(name):
    """A plain file ``name``, to stand where a directory is expected."""
    return lambda directory: (directory / name).write_text("not a directory")


def _folder(name):
    """A folder ``name``, to stand where a file is expected."""
    return lambda directory: (directory / name).mkdir()


def _broken_model(config_json=None):
    """The model folder of BROKEN_MODEL: thresholds.json and, if given, ``config_json``."""
    def prepare(directory):
        folder = directory / BROKEN_MODEL["basedir"] / BROKEN_MODEL["name"]
        folder.mkdir(parents=True)
        (folder / "thresholds.json").write_text('{"prob": 0.5, "nms": 0.4}')
        if config_json is not None:
            (folder / "config.json").write_text(config_json)
    return prepare


def _zarr_image(name, chunks=IMAGE_SHAPE):
    """A zarr store ``name`` holding one small 3D image (of no zero chunk)."""
    def prepare(directory):
        import zarr
        store = zarr.open_array(str(directory / name), mode="w", shape=IMAGE_SHAPE,
                                dtype="uint16", chunks=chunks)
        store[...] = 1 + np.arange(np.prod(IMAGE_SHAPE)).reshape(IMAGE_SHAPE)
    return prepare


def _link(name, target, hard=False):
    """A symbolic (or hard) link ``name`` to the file ``target``."""
    def prepare(directory):
        if hard:
            (directory / name).hardlink_to(directory / target)
        else:
            (directory / name).symlink_to(target)
    return prepare


def _h5(name):
    """An HDF5 file ``name`` holding one image dataset 'raw'."""
    def prepare(directory):
        with h5py.File(directory / name, "w") as f:
            f["raw"] = np.ones(IMAGE_SHAPE, np.uint16)
    return prepare


def _float_image(name, bad_voxel, value):
    """A float32 image ``name`` with ``value`` (NaN or inf) at ``bad_voxel``."""
    def prepare(directory):
        image = np.random.default_rng(0).uniform(0, 1, IMAGE_SHAPE).astype(np.float32)
        image[bad_voxel] = value
        _tif(directory, name, image)
    return prepare


# ---------------------------------------------------------------------------------------------
# damaged or inconsistent files (round two)

#: the rays of the synthetic candidate files, as a model's config.json describes them.
SYNTHETIC_RAYS_JSON = {"name": "Rays_GoldenSpiral",
                       "kwargs": {"n": SYNTHETIC_RAYS, "anisotropy": list(DEFAULT_ANISOTROPY)}}
SYNTHETIC_MODEL = {"n_dim": 3, "n_rays": SYNTHETIC_RAYS, "grid": [1, 2, 2],
                   "rays_json": SYNTHETIC_RAYS_JSON}
GOOD_THRESHOLDS = {"prob": 0.5, "nms": 0.4}
#: blocks of the candidate files the cases damage: four, so that one can claim another's rows.
EDITED_BLOCK_SHAPE = (None, 16, 16)


def _edited_candidates(edit):
    """Setup writing candidates.h5 of several blocks, then changing it with ``edit(h5py.File)``."""
    def prepare(directory):
        with h5py.File(_candidates(directory, block_shape=EDITED_BLOCK_SHAPE), "r+") as f:
            edit(f)
    return prepare


def _set(dataset, index, value):
    """An edit writing ``value`` at ``index`` of ``dataset``."""
    def edit(f):
        f[dataset][index] = value
    return edit


def _attr_edit(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


def _blocks_edit(change):
    """An edit of the blocks table: ``change(blocks)`` on a copy, written back."""
    def edit(f):
        blocks = f["blocks"][()]
        change(blocks)
        f["blocks"][...] = blocks
    return edit


def _shift(field, block, by):
    def change(blocks):
        blocks[field][block] += by
    return change


def _copy_core(src, dst):
    def change(blocks):
        for name in ("z0", "y0", "x0", "z1", "y1", "x1"):
            blocks[name][dst] = blocks[name][src]
    return change


def _point_in_another_block(f):
    """Move the first candidate of block 0 into the core of the last block (still inside)."""
    blocks = f["blocks"][()]
    last = blocks[-1]
    f["points"][int(blocks["row_start"][0])] = [last["z0"], last["y0"], last["x0"]]


def _flip_byte(f):
    """Flip a byte in the middle of the first stored chunk of ``dist``."""
    info = f["dist"].id.get_chunk_info(0)
    f.flush()
    with open(f.filename, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)
        raw.seek(-1, 1)
        raw.write(bytes([byte[0] ^ 0xFF]))


def _shorter_dist(f):
    f["dist"].resize(f["dist"].shape[0] - 1, axis=0)


def _model(config=SYNTHETIC_MODEL, thresholds=GOOD_THRESHOLDS, weights=None):
    """The model folder of BROKEN_MODEL with these JSON contents (and ``weights`` bytes)."""
    def prepare(directory):
        folder = directory / BROKEN_MODEL["basedir"] / BROKEN_MODEL["name"]
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "thresholds.json").write_text(json.dumps(thresholds))
        if weights is not None:
            (folder / "weights_best.h5").write_bytes(weights(directory))
    return prepare


def _demo_weights(fraction):
    """The first ``fraction`` of the demo model's weights file."""
    def read(_directory):
        data = (MODELS / "demo" / "weights_best.h5").read_bytes()
        return data[:int(len(data) * fraction)]
    return read


def _demo_model_config(directory):
    """The demo model's JSON files in BROKEN_MODEL, without weights."""
    folder = directory / BROKEN_MODEL["basedir"] / BROKEN_MODEL["name"]
    folder.mkdir(parents=True)
    for name in ("config.json", "thresholds.json"):
        (folder / name).write_bytes((MODELS / "demo" / name).read_bytes())


def _original_file(edit=None):
    """probabilities.h5 of the original pipeline from the synthetic candidates."""
    def prepare(directory):
        centres = random_centres(CANDIDATE_SHAPE, 3, seed=0)
        _, prob, dist, points = synthetic_candidates(CANDIDATE_SHAPE, centres, seed=1)
        with h5py.File(directory / "probabilities.h5", "w") as f:
            f["prob"], f["dist"], f["points"] = prob, dist, points
            f["shape_inst"] = np.array(CANDIDATE_SHAPE)
            if edit is not None:
                edit(f)
    return prepare


def _imaris_data_group(directory):
    with h5py.File(directory / "img.ims", "w") as f:
        f.create_group("DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data")
        info = f.create_group("DataSetInfo/Image")
        for axis, n in zip("ZYX", IMAGE_SHAPE):
            info.attrs[axis] = np.array([c.encode() for c in str(n)], dtype="S1")


def _zarr_without_a_chunk(directory):
    _zarr_image("img.zarr", chunks=(4, 16, 16))(directory)
    (directory / "img.zarr" / "c" / "1" / "1" / "0").unlink()


def _empty_candidates_of_shape(shape):
    def prepare(directory):
        from stardist import Rays_GoldenSpiral
        rays = Rays_GoldenSpiral(SYNTHETIC_RAYS, anisotropy=DEFAULT_ANISOTROPY)
        write_candidate_file(directory / "candidates.h5", shape, rays, np.zeros(0, np.float32),
                             np.zeros((0, SYNTHETIC_RAYS), np.float32),
                             np.zeros((0, 3), np.int32), block_shape=(None, None, None))
    return prepare


ORIGINAL = {"input": {"prediction": "probabilities.h5"}, "model": BROKEN_MODEL}


class Case(NamedTuple):
    """One bad input: the script, its input (config mapping or YAML text), the overrides and
    the texts its one error line must hold."""
    script: str
    setup: Callable
    overrides: tuple
    expected: tuple


def case(id, script, setup, *expected, overrides=()):
    """One row of the table, shown by pytest as ``id``."""
    return pytest.param(Case(script, setup, tuple(overrides), expected), id=id)


CASES = [
    # the GPU step: images
    case("local-missing-image", LOCAL, _after(local_config("missing.tif")),
         "image.path", "missing.tif", "does not exist"),
    case("local-image-suffix", LOCAL,
         _after(local_config("img.png"), lambda d: _random_bytes(d / "img.png")),
         "image.path", "img.png", "expected a file ending in .tif"),
    case("local-corrupt-image", LOCAL,
         _after(local_config("corrupt.tif"), lambda d: _random_bytes(d / "corrupt.tif")),
         "image.path", "corrupt.tif", "cannot read", "not a TIFF"),
    case("local-truncated-image", LOCAL, _after(local_config(), lambda d: _truncate(_image(d))),
         "image.path", "img.tif", "truncated"),
    case("local-wrong-dataset", LOCAL,
         _after(local_config({"path": "img.h5", "dataset": "rwa"}), _h5("img.h5")),
         "image.dataset", "img.h5", "expected one of 'raw'", "got 'rwa'", "did you mean 'raw'"),
    case("local-channel-out-of-range", LOCAL,
         _after(local_config({"path": "img.tif", "axes": "CZYX", "channel": 5}),
                lambda d: _image(d, shape=(2, *IMAGE_SHAPE))),
         "image.channel", "expected 0..1", "got 5"),
    case("local-2d-image", LOCAL, _after(local_config(), lambda d: _image(d, shape=(32, 32))),
         "image.path", "expected a 3D image", "got shape (32, 32)"),
    case("local-4d-image-without-axes", LOCAL,
         _after(local_config(), lambda d: _image(d, shape=(2, *IMAGE_SHAPE))),
         "image.axes", "needs its axes, e.g. CZYX or ZCYX", "(2, 8, 32, 32)"),
    case("local-empty-axis", LOCAL, _after(local_config(), lambda d: _image(d, shape=(0, 32, 32))),
         "image.path", "empty", "(0, 32, 32)", "expected at least one voxel"),
    case("local-nan-in-sample", LOCAL,
         _after(local_config("nan.tif"), _float_image("nan.tif", (0, 5, 7), np.nan)),
         "image.path", "nan.tif", "contains NaN or inf", "z 0:1", "expected finite"),
    # the only case that loads the model: with this sample size the normalisation samples
    # every third plane (z = 0, 3, 6), so the inf at z = 1 is found when its block is read
    case("local-inf-in-a-block", LOCAL,
         _after(local_config("inf.tif", prediction={"normalize": {"sample_size": 1000}}),
                _float_image("inf.tif", (1, 1, 1), np.inf)),
         "image.path", "inf.tif", "contains NaN or inf", "z 0:8", "expected finite"),
    # the GPU step: models
    case("local-missing-model-folder", LOCAL,
         _with_image(model={"basedir": "nowhere", "name": "demo"}),
         "model folder", "nowhere", "does not exist", "model.basedir"),
    case("local-model-without-config-json", LOCAL,
         _after(local_config(model=BROKEN_MODEL), _image, _broken_model()),
         "model folder", "broken", "expected a StarDist model folder with config.json"),
    case("local-model-config-not-json", LOCAL,
         _after(local_config(model=BROKEN_MODEL), _image, _broken_model('{"n_dim": 3, ')),
         "model file", "config.json", "expected readable JSON"),
    case("local-2d-model", LOCAL,
         _after(local_config(model=BROKEN_MODEL), _image, _broken_model(MODEL_2D)),
         "broken", "expected a StarDist3D model", "got n_dim 2"),
    # read from config.json before TensorFlow loads
    case("local-channels-not-the-models", LOCAL,
         _after(local_config(model=TWO_CHANNEL_MODEL), _image),
         "image.channel", "model multichannel takes 2 channel(s)", "got 1 (0)"),
    # the GPU step: config
    case("local-misspelled-key", LOCAL, _with_image(),
         "prediction.blok_shape", "did you mean 'block_shape'",
         overrides=["prediction.blok_shape=[8,32,32]"]),
    case("local-unknown-key", LOCAL, _with_image(colour="red"),
         "unknown config key 'colour'", "known keys here: image, model, prediction, output"),
    case("local-block-shape-not-a-list", LOCAL, _with_image(),
         "prediction.block_shape", "expected a list of three positive integers", "got 'abc'",
         overrides=["prediction.block_shape=abc"]),
    case("local-block-shape-zero", LOCAL, _with_image(),
         "prediction.block_shape[0]", "expected an integer >= 1", "got 0",
         overrides=["prediction.block_shape=[0,32,32]"]),
    case("local-block-shape-negative", LOCAL, _with_image(),
         "prediction.block_shape[2]", "expected an integer >= 1", "got -8",
         overrides=["prediction.block_shape=[8,32,-8]"]),
    case("local-output-parent-is-a-file", LOCAL, _after(local_config(), _image, _file("blocker")),
         "output.path", "blocker", "is a file", overrides=["output.path=blocker/prediction.h5"]),
    case("local-output-is-a-directory", LOCAL, _after(local_config(), _image, _folder("result")),
         "output.path", "result", "exists and is not a file", overrides=["output.path=result"]),
    case("local-invalid-yaml", LOCAL, _after("image: [unclosed\n"),
         "config file", "cfg.yaml", "is not valid YAML"),
    case("local-malformed-set", LOCAL, _with_image(),
         "--set", "expected key.sub=value", "got 'prediction.block_shape'",
         overrides=["prediction.block_shape"]),
    # the GPU step: outputs that would write over an input
    case("local-output-is-the-image", LOCAL, _with_image(),
         "output.path", "img.tif", "the file of image.path", "choose another path",
         overrides=["output.path=img.tif"]),
    case("local-output-is-a-symlink-to-the-image", LOCAL,
         _after(local_config(), _image, _link("out.h5", "img.tif")),
         "output.path", "out.h5", "the file of image.path", overrides=["output.path=out.h5"]),
    case("local-output-is-a-hard-link-to-the-image", LOCAL,
         _after(local_config(), _image, _link("out.h5", "img.tif", hard=True)),
         "output.path", "out.h5", "the file of image.path", overrides=["output.path=out.h5"]),
    case("local-output-via-dotdot-is-the-image", LOCAL, _after(local_config(), _image,
                                                               _folder("sub")),
         "output.path", "the file of image.path", overrides=["output.path=sub/../img.tif"]),
    case("local-output-inside-the-zarr-image", LOCAL,
         _after(local_config("img.zarr"), _zarr_image("img.zarr")),
         "output.path", "inside image.path", "img.zarr",
         overrides=["output.path=img.zarr/prediction.h5"]),
    # the HPC step: outputs that would write over an input
    case("hpc-labels-is-the-prediction", HPC, _with_candidates(),
         "output.labels", "candidates.h5", "the file of input.prediction",
         overrides=["output.labels=candidates.h5"]),
    case("hpc-labels-is-a-symlink-to-the-prediction", HPC,
         _after(hpc_config(), _candidates, _link("out.h5", "candidates.h5")),
         "output.labels", "the file of input.prediction", overrides=["output.labels=out.h5"]),
    case("hpc-work-dir-holds-the-prediction", HPC, _with_candidates(),
         "output.work_dir", "a directory holding input.prediction",
         overrides=["output.work_dir=."]),
    case("hpc-work-dir-is-the-prediction-folder", HPC,
         _after(hpc_config(input={"prediction": "run/candidates.h5"}), _folder("run"),
                lambda d: _candidates(d / "run")),
         "output.work_dir", "a directory holding input.prediction",
         overrides=["output.work_dir=run"]),
    # the HPC step: the candidate file
    case("hpc-missing-prediction", HPC, _after(hpc_config()),
         "candidate file", "candidates.h5", "does not exist", "input.prediction"),
    case("hpc-corrupt-prediction", HPC,
         _after(hpc_config(), lambda d: _random_bytes(d / "candidates.h5")),
         "candidate file", "candidates.h5", "not a readable HDF5 file", "signature"),
    case("hpc-truncated-prediction", HPC,
         _after(hpc_config(), lambda d: _truncate(_candidates(d))),
         "candidate file", "candidates.h5", "not a readable HDF5 file", "truncated"),
    case("hpc-not-a-prediction-file", HPC, _after(hpc_config(), _h5("candidates.h5")),
         "candidate file", "candidates.h5", "prob, dist, points, blocks missing",
         "expected a prediction.h5"),
    # the HPC step: models
    # the synthetic candidates have 32 rays, the demo model 96
    case("hpc-rays-mismatch", HPC, _with_candidates(model=DEMO_MODEL),
         "rays mismatch", "model demo has 96 rays", "prediction file has 32", "candidates.h5",
         "expected the model that predicted the file"),
    case("hpc-model-without-config-json", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates, _broken_model()),
         "model folder", "broken", "expected a StarDist model folder with config.json"),
    case("hpc-2d-model", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates, _broken_model(MODEL_2D)),
         "broken", "expected a StarDist3D model", "got n_dim 2"),
    # the HPC step: config
    case("hpc-tile-shape-zero", HPC, _with_candidates(),
         "nms.tile_shape[1]", "expected an integer >= 1", "got 0",
         overrides=["nms.tile_shape=[null,0,16]"]),
    case("hpc-tile-shape-negative", HPC, _with_candidates(),
         "nms.tile_shape[0]", "expected an integer >= 1", "got -4",
         overrides=["nms.tile_shape=[-4,16,16]"]),
    case("hpc-chunk-shape-zero", HPC, _with_candidates(),
         "labeling.chunk_shape[2]", "expected an integer >= 1", "got 0",
         overrides=["labeling.chunk_shape=[8,16,0]"]),
    case("hpc-halo-not-a-list", HPC, _with_candidates(),
         "nms.halo", "expected 'auto' or a list of three integers >= 0", "got 'big'",
         overrides=["nms.halo=big"]),
    case("hpc-misspelled-key", HPC, _with_candidates(),
         "nms.tile_shap", "did you mean 'tile_shape'", overrides=["nms.tile_shap=[8,8,8]"]),
    case("hpc-workers-not-an-integer", HPC, _with_candidates(),
         "cluster.local.n_workers", "expected an integer", "got 'two'",
         overrides=["cluster.local.n_workers=two"]),
    case("hpc-cluster-mode-pbs", HPC, _with_candidates(),
         "cluster.mode", "expected one of 'local', 'slurm'", "got 'pbs'",
         overrides=["cluster.mode=pbs"]),
    case("hpc-labels-parent-is-a-file", HPC, _after(hpc_config(), _candidates, _file("blocker")),
         "output.labels", "blocker", "is a file", overrides=["output.labels=blocker/label.h5"]),
    case("hpc-work-dir-is-a-file", HPC, _after(hpc_config(), _candidates, _file("work")),
         "output.work_dir", "work", "exists and is not a directory",
         overrides=["output.work_dir=work"]),
    # round two: damaged or inconsistent candidate files
    case("hpc-dist-one-row-short", HPC, _after(hpc_config(), _edited_candidates(_shorter_dist)),
         "candidates.h5", "dataset 'dist'", "expected shape"),
    case("hpc-nan-in-dist", HPC,
         _after(hpc_config(), _edited_candidates(_set("dist", (3, 5), np.nan))),
         "candidates.h5", "dataset 'dist'", "expected finite ray lengths > 0", "got nan",
         "at row 3"),
    case("hpc-inf-in-dist", HPC,
         _after(hpc_config(), _edited_candidates(_set("dist", (4, 0), np.inf))),
         "dataset 'dist'", "got inf at row 4"),
    case("hpc-negative-dist", HPC,
         _after(hpc_config(), _edited_candidates(_set("dist", (2, 1), -1.0))),
         "dataset 'dist'", "got -1.0 at row 2"),
    case("hpc-nan-prob", HPC, _after(hpc_config(), _edited_candidates(_set("prob", 1, np.nan))),
         "dataset 'prob'", "expected finite probabilities in [0, 1]", "at row 1"),
    case("hpc-prob-above-one", HPC,
         _after(hpc_config(), _edited_candidates(_set("prob", 0, 1.5))),
         "dataset 'prob'", "got 1.5 at row 0"),
    case("hpc-point-outside-the-image", HPC,
         _after(hpc_config(), _edited_candidates(_set("points", 0, [100, 0, 0]))),
         "dataset 'points'", "expected points inside their block's core", "[100, 0, 0]"),
    case("hpc-point-in-another-block", HPC,
         _after(hpc_config(), _edited_candidates(_point_in_another_block)),
         "dataset 'points'", "expected points inside their block's core"),
    case("hpc-blocks-rows-overlap", HPC,
         _after(hpc_config(), _edited_candidates(_blocks_edit(_shift("row_start", 1, -1)))),
         "dataset 'blocks'", "expected row ranges that partition rows", "at block 1"),
    case("hpc-blocks-skip-rows", HPC,
         _after(hpc_config(), _edited_candidates(_blocks_edit(_shift("row_start", 1, 1)))),
         "dataset 'blocks'", "at block 1"),
    case("hpc-blocks-past-the-end", HPC,
         _after(hpc_config(), _edited_candidates(_blocks_edit(_shift("row_stop", -1, 5)))),
         "dataset 'blocks'", "expected row ranges that end at row"),
    case("hpc-blocks-claim-the-same-core", HPC,
         _after(hpc_config(), _edited_candidates(_blocks_edit(_copy_core(0, 1)))),
         "dataset 'blocks'", "expected block cores that do not overlap"),
    case("hpc-image-shape-two-entries", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("image_shape", [8, 32]))),
         "attribute 'image_shape'", "expected 3 positive integers", "[8, 32]"),
    case("hpc-image-shape-negative", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("image_shape", [8, -32, 32]))),
         "attribute 'image_shape'", "expected 3 positive integers"),
    case("hpc-rays-json-not-json", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("rays_json", "{not json"))),
         "attribute 'rays_json'", "expected StarDist's rays description"),
    case("hpc-rays-json-wrong-ray-count", HPC, _after(hpc_config(), _edited_candidates(
        _attr_edit("rays_json", json.dumps({**SYNTHETIC_RAYS_JSON, "kwargs": {"n": 16}})))),
         "dataset 'dist'", "expected shape", "16"),
    case("hpc-nms-thresh-not-a-number", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("nms_thresh", "high"))),
         "attribute 'nms_thresh'", "expected a number in [0, 1]", "'high'"),
    case("hpc-nms-thresh-above-one", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("nms_thresh", 5.0))),
         "attribute 'nms_thresh'", "got 5.0"),
    case("hpc-format-version-99", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("format_version", 99))),
         "attribute 'format_version'", "expected 1, got 99"),
    case("hpc-attribute-changed-in-form", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("nms_thresh", 0.31))),
         "attribute 'header_sha256'", "an attribute was changed or damaged"),
    case("hpc-byte-flipped-in-dist", HPC, _after(hpc_config(), _edited_candidates(_flip_byte)),
         "dataset 'dist'", "expected readable rows, got a damaged chunk", "rerun the GPU step"),
    case("hpc-unfinished-gpu-step-temporary", HPC,
         _after(hpc_config(), _edited_candidates(_attr_edit("resume_key", "{}"))),
         "attribute 'resume_key'", "unfinished GPU-step temporary", "rerun local_prediction.py"),
    case("hpc-original-nan-dist", HPC,
         _after(hpc_config(**ORIGINAL), _model(),
                _original_file(lambda f: f["dist"].__setitem__((2, 3), np.nan))),
         "probabilities.h5", "dataset 'dist'", "expected finite ray lengths > 0", "at row 2"),
    case("hpc-original-prob-above-one", HPC,
         _after(hpc_config(**ORIGINAL), _model(),
                _original_file(lambda f: f["prob"].__setitem__(5, 2.0))),
         "probabilities.h5", "dataset 'prob'", "got 2.0 at row 5"),
    # round two: model folders
    case("hpc-model-threshold-a-string", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates,
                _model(thresholds={"prob": "high", "nms": 0.4})),
         "thresholds.json", "'prob': expected a number in [0, 1]", "'high'"),
    case("hpc-model-threshold-null", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates,
                _model(thresholds={"prob": 0.5, "nms": None})),
         "thresholds.json", "'nms': expected a number in [0, 1]", "None"),
    case("hpc-model-nms-above-one", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates,
                _model(thresholds={"prob": 0.5, "nms": 1.5})),
         "thresholds.json", "'nms'", "1.5"),
    case("hpc-model-empty-rays-json", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates,
                _model(config={**SYNTHETIC_MODEL, "rays_json": {}})),
         "config.json", "'rays_json': expected StarDist's rays description"),
    case("hpc-model-unknown-rays", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates,
                _model(config={**SYNTHETIC_MODEL, "rays_json": {"name": "Rays_Cube",
                                                                "kwargs": {}}})),
         "config.json", "'rays_json': expected StarDist's rays description"),
    case("hpc-model-n-rays-disagree", HPC,
         _after(hpc_config(model=BROKEN_MODEL), _candidates,
                _model(config={**SYNTHETIC_MODEL, "n_rays": 64})),
         "config.json", "'n_rays': expected 32", "got 64"),
    case("local-model-without-weights", LOCAL,
         _after(local_config(model=BROKEN_MODEL), _image, _demo_model_config),
         "model folder", "broken", "expected trained weights", "untrained"),
    case("local-model-truncated-weights", LOCAL,
         _after(local_config(model=BROKEN_MODEL), _image,
                _model(config=json.loads((MODELS / "demo" / "config.json").read_text()),
                       weights=_demo_weights(0.5))),
         "model weights", "weights_best.h5", "not a readable HDF5 file"),
    # round two: images
    case("local-imaris-data-is-a-group", LOCAL,
         _after(local_config("img.ims"), _imaris_data_group),
         "image.path", "img.ims", "expected a dataset", "Channel 0/Data", "got Group"),
    case("local-zarr-missing-chunk", LOCAL,
         _after(local_config("img.zarr"), _zarr_without_a_chunk),
         "image.path", "img.zarr", "1 of 8 missing", "chunk 1.1.0", "image.missing_chunks"),
    case("local-pmin-not-below-pmax", LOCAL, _with_image(),
         "prediction.normalize.pmin", "a percentile below pmax", "got 99.9",
         overrides=["prediction.normalize.pmin=99.9"]),
    # round two: config files
    case("local-duplicate-key", LOCAL,
         _after("image: {path: img.tif}\nmodel: {basedir: m, name: d}\nimage: {path: b.tif}\n",
                _image),
         "cfg.yaml", "config key 'image' appears twice", "line 3"),
    case("local-top-level-list-with-set", LOCAL, _after("- image\n- model\n"),
         "cfg.yaml", "expected a mapping of sections", "got list",
         overrides=["prediction.block_shape=[8,32,32]"]),
    case("hpc-top-level-scalar", HPC, _after("42\n"),
         "cfg.yaml", "expected a mapping of sections", "got int"),
    case("hpc-chunk-over-4-gib", HPC,
         _after(hpc_config(), _empty_candidates_of_shape((1024, 1024, 1024))),
         "labeling.chunk_shape", "expected an HDF5 chunk under 4 GiB",
         overrides=["labeling.chunk_shape=[1024,1024,1024]"]),
    # round two: SLURM settings, checked before anything is submitted
    case("hpc-slurm-memory-lots", HPC, _with_candidates(),
         "cluster.slurm.memory", "expected a memory size such as 32GB", "'lots'",
         overrides=["cluster.slurm.memory=lots"]),
    case("hpc-slurm-walltime-soon", HPC, _with_candidates(),
         "cluster.slurm.walltime", "expected a SLURM time such as 24:00:00", "'soon'",
         overrides=["cluster.slurm.walltime=soon"]),
    case("hpc-slurm-worker-timeout-zero", HPC, _with_candidates(),
         "cluster.slurm.worker_timeout", "expected a number > 0", "0",
         overrides=["cluster.slurm.worker_timeout=0"]),
    # measurements and the report
    case("hpc-measure-missing-image", HPC, _with_candidates(measure={"image": "missing.tif"}),
         "measure.image", "missing.tif", "does not exist"),
    case("hpc-measure-image-of-another-shape", HPC,
         _after(hpc_config(measure={"image": "img.tif"}), _candidates,
                lambda d: _image(d, shape=(8, 32, 31))),
         "measure.image", "expected an image of the label volume's shape (8, 32, 32)",
         "got (8, 32, 31)"),
    case("hpc-measure-channel-out-of-range", HPC,
         _after(hpc_config(measure={"image": "img.tif", "axes": "CZYX", "channels": [0, 2]}),
                _candidates, lambda d: _image(d, shape=(2, *CANDIDATE_SHAPE))),
         "measure.channels", "expected channel indices 0..1", "got [0, 2]"),
    case("hpc-measure-channels-not-a-list", HPC, _with_candidates(),
         "measure.channels", "expected 'all' or a non-empty list", "'first'",
         overrides=["measure.channels=first"]),
    case("hpc-report-is-the-candidates", HPC, _with_candidates(),
         "output.report", "candidates.h5", "the file of input.prediction",
         overrides=["output.report=candidates.h5"]),
    case("hpc-report-is-the-label-file", HPC, _with_candidates(),
         "output.report", "label.h5", "the file of output.labels",
         overrides=["output.report=output/label.h5"]),
]


def _run(directory, script, config, overrides=()):
    """Run ``script`` on ``config`` (a mapping, or YAML text) written to directory/cfg.yaml."""
    path = directory / "cfg.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    command = [sys.executable, str(REPO / script), str(path)]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, cwd=directory, timeout=300)


def _outputs(directory):
    """Output files (and their temporaries) anywhere below ``directory``."""
    return sorted(p for name in OUTPUT_NAMES for p in directory.rglob(name) if p.is_file())


def _checksums(directory):
    """SHA-256 of every file below ``directory`` (links followed), by relative path."""
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_ends_with_one_line_and_exit_code_2(tmp_path, bad):
    config = bad.setup(tmp_path)
    inputs = _checksums(tmp_path)
    result = _run(tmp_path, bad.script, config, bad.overrides)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors == lines[-1:], result.stderr[-3000:]
    missing = [text for text in bad.expected if text not in errors[0]]
    assert not missing, f"{missing} not in: {errors[0]}"
    assert _outputs(tmp_path) == []
    after = _checksums(tmp_path)
    assert {name: after.get(name) for name in inputs} == inputs, "an input changed"


def test_hpc_step_on_zero_candidates_writes_background(tmp_path):
    from stardist import Rays_GoldenSpiral
    rays = Rays_GoldenSpiral(SYNTHETIC_RAYS, anisotropy=DEFAULT_ANISOTROPY)
    write_candidate_file(tmp_path / "candidates.h5", CANDIDATE_SHAPE, rays,
                         np.zeros(0, np.float32), np.zeros((0, SYNTHETIC_RAYS), np.float32),
                         np.zeros((0, 3), np.int32))
    result = _run(tmp_path, HPC, hpc_config())
    assert result.returncode == 0, result.stderr[-3000:]
    with h5py.File(tmp_path / "output" / "label.h5", "r") as f:
        labels = f["labels"]
        assert labels.dtype == np.uint32 and labels.shape == CANDIDATE_SHAPE
        assert not labels[()].any() and len(f["objects"]) == 0
    assert _outputs(tmp_path) == [tmp_path / "output" / name for name in ("label.h5",
                                                                         "report.html")]


# ---------------------------------------------------------------------------------------------
# every message the scripts can print is explained in doc/troubleshooting.md

#: words of a message's literal text required in the page (enough to find it, few enough
#: that rewording the rest of a message does not break the test).
PHRASE_WORDS = 4


def _words(text):
    """Words of ``text``, without quotes and punctuation: code spans and prose compare alike."""
    return [w.strip(".") for w in re.findall(r"[\w.\-/]+", text) if w.strip(".")]


def _literal_parts(node):
    """The literal text pieces of a message expression (f-strings, '+' concatenations)."""
    if isinstance(node, ast.BinOp):
        return _literal_parts(node.left) + _literal_parts(node.right)
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant)]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    return []


def _leading_phrase(node):
    """The first words of the first literal piece of a message that has two words or more."""
    for part in _literal_parts(node):
        words = _words(part)
        if len(words) >= 2:
            return " ".join(words[:PHRASE_WORDS])
    return None


def _user_error_messages():
    """(file:line, leading phrase) of the message of every ``UserError(...)`` in the package."""
    for path in sorted((REPO / "stardist_hpc").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "UserError" and node.args):
                yield f"{path.relative_to(REPO)}:{node.lineno}", _leading_phrase(node.args[0])


def test_every_error_message_is_in_troubleshooting():
    page = " ".join(_words((REPO / "doc" / "troubleshooting.md").read_text()))
    messages = list(_user_error_messages())
    assert len(messages) > 30
    assert [(site, phrase) for site, phrase in messages
            if phrase is None or phrase not in page] == []
