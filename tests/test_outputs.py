"""The outputs people open: multiscale OME-Zarr labels, the objects TSV, voxel sizes, storage
chunks (issue #12, items 1-4)."""
import csv
import json

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from stardist_hpc import UserError, read_objects, segment_candidates
from stardist_hpc.io.candidate_checks import HEADER_CHECKSUM, header_checksum
from stardist_hpc.io.candidates import CandidateFile
from stardist_hpc.io.ome_zarr import plan_levels
from stardist_hpc.io.voxel_size import UNKNOWN, VoxelSize, read_voxel_size
from stardist_hpc.synthetic import demo_candidate_file

VOXEL = (2.0, 0.5, 0.25)
IMAGE = "labels/nuclei"


def _with_voxel_size(path, size, unit="micrometer"):
    """Give a candidate file a voxel size, as the GPU step records it."""
    with h5py.File(path, "a") as f:
        f.attrs["voxel_size"], f.attrs["voxel_unit"] = size, unit
        f.attrs[HEADER_CHECKSUM] = header_checksum(f.attrs)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, dask_client):
    """One run on a 16x48x48 volume: task chunks of 8x32x32 in storage chunks of 4x16x16."""
    folder = tmp_path_factory.mktemp("outputs")
    candidates = _with_voxel_size(demo_candidate_file(folder / "prediction.h5", n_nuclei=8),
                                  VOXEL)
    segment_candidates(candidates, folder / "label.h5", tile_shape=(None, 24, 24),
                       chunk_shape=(8, 32, 32), storage_shape=(4, 16, 16), client=dask_client,
                       objects_parquet=folder / "objects.parquet", show_progress=False)
    return folder


def _labels(folder):
    with h5py.File(folder / "label.h5", "r") as f:
        return f["labels"][()], f["labels"].chunks, dict(f.attrs)


def test_label_file_has_storage_chunks_and_voxel_size(run):
    labels, chunks, attrs = _labels(run)
    assert chunks == (4, 16, 16)
    assert labels.max() == len(read_objects(run / "label.h5"))
    assert tuple(attrs["voxel_size"]) == VOXEL and attrs["voxel_unit"] == "micrometer"


def test_ome_zarr_levels_equal_label_file_and_validate(run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v04.image_label import ImageLabel
    from ome_zarr_models.v04.labels import Labels

    store = run / "label.ome.zarr"
    assert not (run / "label.ome.zarr.tmp").exists()
    Labels.from_zarr(zarr.open_group(store / "labels", mode="r"))     # NGFF 0.4 schema
    image = ImageLabel.from_zarr(zarr.open_group(store / IMAGE, mode="r"))
    [multiscale] = image.attributes.multiscales
    assert [a.unit for a in multiscale.axes] == ["micrometer"] * 3
    labels, _, _ = _labels(run)
    levels = plan_levels(labels.shape, (4, 16, 16), VoxelSize(VOXEL, "micrometer"))
    # an axis is halved only while its voxels are under twice the finest: x first, then y
    # and x, z only once all are 2 um; until one 4x16x16 chunk holds the level
    assert [lv.factor for lv in levels] == [(1, 1, 1), (1, 1, 2), (1, 2, 4), (1, 4, 8),
                                            (2, 8, 16), (4, 16, 32)]
    scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
    assert scales == [[v * f for v, f in zip(VOXEL, lv.factor)] for lv in levels]
    [node] = [n for n in Reader(parse_url(store / "labels"))() if n.first(Label)]
    assert len(node.data) == len(levels)
    for data, level in zip(node.data, levels):
        expected = labels[tuple(slice(None, None, f) for f in level.factor)]
        np.testing.assert_array_equal(np.asarray(data), expected)
        assert data.chunksize == level.chunks


def test_objects_tsv_has_mobie_columns_in_physical_units(run):
    objects = read_objects(run / "label.h5")
    rendered = objects[objects["voxel_count"] > 0]
    with open(run / "objects.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    mobie = ["label_id", *(f"{k}_{a}" for k in ("anchor", "bb_min", "bb_max") for a in "xyz")]
    assert list(rows[0])[:len(mobie)] == mobie
    assert set(objects.dtype.names) - {"id"} <= set(rows[0])     # every field, generically
    assert len(rows) == len(rendered)
    column = {name: np.array([float(r[name]) for r in rows]) for name in rows[0]}
    np.testing.assert_array_equal(column["label_id"], rendered["id"])
    for axis, size in zip("zyx", VOXEL):
        np.testing.assert_allclose(column[f"anchor_{axis}"], rendered[f"centroid_{axis}"] * size)
        np.testing.assert_allclose(column[f"bb_min_{axis}"], rendered[f"{axis}0"] * size)
        np.testing.assert_allclose(column[f"bb_max_{axis}"], rendered[f"{axis}1"] * size)
    np.testing.assert_allclose(column["volume"], rendered["voxel_count"] * np.prod(VOXEL))
    np.testing.assert_allclose(column["prob"], rendered["prob"], rtol=1e-6)
    import pyarrow.parquet
    parquet = pyarrow.parquet.read_table(run / "objects.parquet").to_pydict()
    assert list(parquet) == list(column)
    for name, values in column.items():
        np.testing.assert_allclose(parquet[name], values, rtol=1e-6)


def test_ome_zarr_resumes_from_intact_markers_only(tmp_path, dask_client):
    """A rerun keeps intact OME-Zarr chunks, rewrites missing or damaged ones, and the store
    is the same."""
    candidates = demo_candidate_file(tmp_path / "prediction.h5", n_nuclei=4)

    def segment():
        segment_candidates(candidates, tmp_path / "label.h5", tile_shape=(None, 24, 24),
                           chunk_shape=(8, 32, 32), storage_shape=(4, 16, 16),
                           client=dask_client, show_progress=False)
        group = zarr.open_group(tmp_path / "label.ome.zarr", mode="r")[IMAGE]
        return {level: group[level][...] for level in group.array_keys()}

    before = segment()
    # as if interrupted before the store was published, with two chunk files lost
    (tmp_path / "label.ome.zarr").rename(tmp_path / "label.ome.zarr.tmp")
    level0 = tmp_path / "label.ome.zarr.tmp" / IMAGE / "0"
    files = sorted(p.relative_to(level0) for p in level0.rglob("*")
                   if p.is_file() and p.name[0] != ".")
    (level0 / files[0]).write_bytes(b"damaged")
    (level0 / files[-1]).unlink()

    def task(chunk):   # a task chunk of 8x32x32 holds 2x2x2 storage chunks
        return tuple(int(c) // 2 for c in chunk.parts)
    [untouched, *_] = [f for f in files if task(f) not in (task(files[0]), task(files[-1]))]
    kept = (level0 / untouched).stat().st_mtime_ns
    after = segment()
    assert after.keys() == before.keys()
    for level in before:
        np.testing.assert_array_equal(after[level], before[level])
    assert (tmp_path / "label.ome.zarr" / IMAGE / "0" / untouched).stat().st_mtime_ns == kept


def test_outputs_can_be_skipped(tmp_path, dask_client):
    candidates = demo_candidate_file(tmp_path / "prediction.h5", n_nuclei=2)
    segment_candidates(candidates, tmp_path / "label.h5", ome_zarr=None, objects_tsv=None,
                       report=None, client=dask_client, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.h5", "prediction.h5", "work"]
    with h5py.File(tmp_path / "label.h5", "r") as f:   # an old-style file: unknown voxel size
        assert tuple(f.attrs["voxel_size"]) == UNKNOWN.size
        assert f.attrs["voxel_unit"] == UNKNOWN.unit
    assert CandidateFile(candidates).meta.voxel_size == UNKNOWN.size


# ---------------------------------------------------------------------------------------------
# voxel sizes from image metadata


VOLUME = np.zeros((4, 8, 8), np.uint8)


def test_voxel_size_of_imagej_and_ome_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", VOLUME, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    assert read_voxel_size(tmp_path / "ij.tif") == VoxelSize((2.0, 0.5, 0.25), "micrometer")
    tifffile.imwrite(tmp_path / "ome.tif", VOLUME, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.5,
                               "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeYUnit": "nm", "PhysicalSizeZUnit": "nm"})
    assert read_voxel_size(tmp_path / "ome.tif") == VoxelSize((3.0, 0.5, 0.5), "nanometer")
    tifffile.imwrite(tmp_path / "plain.tif", VOLUME, photometric="minisblack")
    assert read_voxel_size(tmp_path / "plain.tif") == UNKNOWN


def _imaris_attr(text):
    return np.array(list(text), dtype="S1")   # as Imaris writes: one byte per element


def test_voxel_size_of_imaris_hdf5_and_ome_zarr(tmp_path):
    with h5py.File(tmp_path / "a.ims", "w") as f:
        info = f.create_group("DataSetInfo/Image")
        for name, value in {"X": "8", "Y": "8", "Z": "4", "ExtMin0": "0", "ExtMin1": "0",
                            "ExtMin2": "10", "ExtMax0": "4", "ExtMax1": "2", "ExtMax2": "18",
                            "Unit": "um"}.items():
            info.attrs[name] = _imaris_attr(value)
    assert read_voxel_size(tmp_path / "a.ims") == VoxelSize((2.0, 0.25, 0.5), "micrometer")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=VOLUME).attrs["element_size_um"] = (1.5, 0.5, 0.5)
    assert read_voxel_size(tmp_path / "a.h5") == VoxelSize((1.5, 0.5, 0.5), "micrometer")
    root = tmp_path / "a.ome.zarr"
    zarr.create_array(root / "0", data=VOLUME, zarr_format=2)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    (root / ".zgroup").write_text('{"zarr_format": 2}')
    (root / ".zattrs").write_text(json.dumps({"multiscales": [{"version": "0.4", "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [4.0, 1.0, 1.0]}]}]}]}))
    assert read_voxel_size(root) == VoxelSize((4.0, 1.0, 1.0), "micrometer")
    assert read_voxel_size(root, "0") == VoxelSize((4.0, 1.0, 1.0), "micrometer")


def test_parquet_without_pyarrow_is_refused_before_any_work(tmp_path, monkeypatch):
    from stardist_hpc.io import tables
    monkeypatch.setattr(tables, "parquet_available", lambda: False)
    candidates = demo_candidate_file(tmp_path / "prediction.h5", n_nuclei=2)
    with pytest.raises(UserError, match="'output.objects_parquet': writing .* needs pyarrow"):
        segment_candidates(candidates, tmp_path / "label.h5",
                           objects_parquet=tmp_path / "objects.parquet", show_progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["prediction.h5"]


@pytest.mark.parametrize("n_objects", [0, 3])
def test_tables_carry_every_field_generically(tmp_path, n_objects):
    """Fields other modules add to the objects table (e.g. class probabilities) become
    columns; a field of several values per object becomes name_0, name_1, ..."""
    from stardist_hpc.io.label_file import OBJECT_DTYPE
    from stardist_hpc.io.tables import table_columns, write_tsv
    objects = np.zeros(n_objects, np.dtype(OBJECT_DTYPE.descr + [("class_id", "i4"),
                                                                ("class_prob", "f4", (2,))]))
    objects["id"], objects["voxel_count"] = np.arange(1, n_objects + 1), 1
    objects["class_prob"] = (0.25, 0.75)
    write_tsv(tmp_path / "objects.tsv", table_columns(objects, UNKNOWN))
    with open(tmp_path / "objects.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    header = (tmp_path / "objects.tsv").read_text().splitlines()[0].split("\t")
    assert header[-3:] == ["class_id", "class_prob_0", "class_prob_1"]
    assert [(r["class_prob_0"], r["class_prob_1"]) for r in rows] == [("0.25", "0.75")] * n_objects


def test_tsv_blocks_join_into_the_same_table(tmp_path, monkeypatch):
    """The TSV is formatted ROWS_PER_BLOCK rows at a time (the driver's memory): block
    boundaries change nothing in the file."""
    from stardist_hpc.io import tables
    rng = np.random.default_rng(0)
    columns = {"label_id": np.arange(1, 8, dtype=np.uint32), "volume": rng.random(7) * 100,
               "voxel_count": rng.integers(0, 1000, 7)}
    tables.write_tsv(tmp_path / "whole.tsv", columns)
    monkeypatch.setattr(tables, "ROWS_PER_BLOCK", 3)
    tables.write_tsv(tmp_path / "blocks.tsv", columns)
    text = (tmp_path / "blocks.tsv").read_text()
    assert text == (tmp_path / "whole.tsv").read_text()
    assert len(text.splitlines()) == 1 + 7
