"""Random damage to inputs and checkpoints: a one-line error or the intact result, nothing else.

Each seed damages one file (truncation, flipped bytes inside the stored data, a deleted
dataset or chunk, an edited attribute, swapped checkpoints) and runs the step through the
Python API. The run must either raise :class:`UserError` with a one-line message or succeed
with exactly the result of the intact input; any other exception fails the test. Bytes are
flipped inside data chunks and checkpoint files, not inside HDF5's own metadata, whose damage
the HDF5 library itself may not survive.
"""
import shutil

import h5py
import numpy as np
import pytest

from stardist_hpc import UserError, predict_candidates, segment_candidates
from stardist_hpc.synthetic import demo_candidate_file, nuclei_volume

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

SEEDS = range(12)
TILES = {"tile_shape": (None, 24, 24), "chunk_shape": (8, 24, 24)}
CANDIDATE_DATASETS = ("prob", "dist", "points", "blocks")


def _labels(path):
    with h5py.File(path, "r") as f:
        return f["labels"][()]


def _outcome(run):
    """None after a one-line UserError, else what ``run()`` returned."""
    try:
        return run()
    except UserError as error:
        assert "\n" not in str(error)
        return None


def _flip_in_chunk(path, dataset, rng):
    """Flip one random byte inside a random stored chunk of ``dataset``."""
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        info = dset.id.get_chunk_info(int(rng.integers(dset.id.get_num_chunks())))
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + int(rng.integers(info.size)))
        byte = raw.read(1)
        raw.seek(-1, 1)
        raw.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path, rng):
    data = path.read_bytes()
    path.write_bytes(data[:int(rng.integers(len(data)))])


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def _edit_attribute(path, rng):
    with h5py.File(path, "r+") as f:
        f.attrs[_pick(rng, sorted(f.attrs))] = _pick(rng, ["garbage", -1, 1e9, 0.5, "[1, 2]"])


def _delete_dataset(path, rng):
    with h5py.File(path, "r+") as f:
        del f[_pick(rng, CANDIDATE_DATASETS)]


@pytest.fixture(scope="module")
def intact(tmp_path_factory, dask_client):
    """A small candidate file, its labels, and the work_dir of that run."""
    folder = tmp_path_factory.mktemp("intact")
    candidates = demo_candidate_file(folder / "prediction.h5", n_nuclei=4)
    summary = segment_candidates(candidates, folder / "label.h5", client=dask_client,
                                 show_progress=False, **TILES)
    return candidates, _labels(summary.labels), folder / "work"


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_candidate_file(tmp_path, dask_client, intact, seed):
    source, expected, _ = intact
    rng = np.random.default_rng(seed)
    damaged = tmp_path / "prediction.h5"
    shutil.copy(source, damaged)
    damage = [lambda: _truncate(damaged, rng),
              lambda: _flip_in_chunk(damaged, _pick(rng, CANDIDATE_DATASETS), rng),
              lambda: _edit_attribute(damaged, rng),
              lambda: _delete_dataset(damaged, rng)][seed % 4]
    damage()
    summary = _outcome(lambda: segment_candidates(damaged, tmp_path / "label.h5",
                                                  client=dask_client, show_progress=False,
                                                  **TILES))
    if summary is not None:
        np.testing.assert_array_equal(_labels(summary.labels), expected)


def _checkpoints(work_dir):
    return sorted(p for p in work_dir.rglob("*") if p.is_file())


def _damage_checkpoint(work_dir, rng):
    """Truncate, empty, flip a byte in, or swap with a sibling, one random checkpoint."""
    files = _checkpoints(work_dir)
    target = files[int(rng.integers(len(files)))]
    kind = int(rng.integers(4))
    if kind == 0:
        _truncate(target, rng)
    elif kind == 1:
        target.write_bytes(b"")
    elif kind == 2 and target.suffix == ".h5":
        _flip_in_chunk(target, "dist", rng)
    elif kind == 2:
        data = bytearray(target.read_bytes())
        if data:
            data[int(rng.integers(len(data)))] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        siblings = [p for p in files if p.parent == target.parent and p.suffix == target.suffix
                    and p != target]
        if siblings:
            other = siblings[int(rng.integers(len(siblings)))]
            a, b = target.read_bytes(), other.read_bytes()
            target.write_bytes(b)
            other.write_bytes(a)


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_checkpoints_are_recomputed(tmp_path, dask_client, intact, seed):
    candidates, expected, work_dir = intact
    copy = tmp_path / "work"
    shutil.copytree(work_dir, copy)
    _damage_checkpoint(copy, np.random.default_rng(seed))
    summary = _outcome(lambda: segment_candidates(candidates, tmp_path / "label.h5",
                                                  work_dir=copy, client=dask_client,
                                                  show_progress=False, **TILES))
    assert summary is not None, "a damaged checkpoint must be recomputed, not refused"
    np.testing.assert_array_equal(_labels(summary.labels), expected)


ZARR_SHAPE, ZARR_CHUNKS = (16, 64, 64), (8, 32, 32)


@pytest.fixture(scope="module")
def zarr_image(tmp_path_factory, demo_model):
    """A zarr image and the candidates of its intact prediction."""
    import zarr
    folder = tmp_path_factory.mktemp("zarr")
    image = (nuclei_volume(ZARR_SHAPE, 6, seed=5)[0] * 1000 + 100).astype(np.uint16)
    zarr.create_array(str(folder / "image.zarr"), data=image, chunks=ZARR_CHUNKS)
    predict_candidates(folder / "image.zarr", demo_model, folder / "intact.h5",
                       block_shape=ZARR_SHAPE, show_progress=False)
    with h5py.File(folder / "intact.h5", "r") as f:
        return folder / "image.zarr", {n: f[n][()] for n in ("prob", "dist", "points")}


@pytest.mark.parametrize("damage", ["delete-chunk", "truncate-chunk", "empty-chunk",
                                    "metadata"])
def test_damaged_zarr_image(tmp_path, demo_model, zarr_image, damage):
    """Bytes flipped inside a chunk's pixels are not tried: without a checksum in the store
    they can decode to other, valid pixels, which no reader can tell apart."""
    source, expected = zarr_image
    store = tmp_path / "image.zarr"
    shutil.copytree(source, store)
    chunk = sorted((store / "c").rglob("*"))[-1]
    rng = np.random.default_rng(0)
    {"delete-chunk": lambda: chunk.unlink(),
     "truncate-chunk": lambda: _truncate(chunk, rng),
     "empty-chunk": lambda: chunk.write_bytes(b""),
     "metadata": lambda: (store / "zarr.json").write_text('{"zarr_format": 3, "node_')}[damage]()
    summary = _outcome(lambda: predict_candidates(store, demo_model, tmp_path / "out.h5",
                                                  block_shape=ZARR_SHAPE, show_progress=False))
    if summary is not None:
        with h5py.File(tmp_path / "out.h5", "r") as f:
            for name, values in expected.items():
                np.testing.assert_array_equal(f[name][()], values)
    assert summary is None or damage != "delete-chunk"
