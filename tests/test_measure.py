"""Per-nucleus intensities (``measure``) and the QC report of the HPC step."""
import base64
import dataclasses
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml
from conftest import patch_tasks_in_process
from scipy import ndimage
from skimage.measure import regionprops_table

from stardist_hpc.config import HpcConfig, load
from stardist_hpc.errors import UserError
from stardist_hpc.geometry.tiling import Grid
from stardist_hpc.io.intensities import STATISTICS, column_name
from stardist_hpc.segment import step as hpc
from stardist_hpc.segment.chunk_extras import ExtrasCollector, checkpointed_chunk
from stardist_hpc.segment.measure import ChunkIntensities, IntensityMerge
from stardist_hpc.segment.preview import PreviewMerge, preview_chunk, preview_steps
from stardist_hpc.segment.report import FIGURES, MEASURE_FIGURES, seam_table

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

#: chunks that divide no axis of the 16x48x56 volume of ``nuclei_candidates``.
ODD_CHUNKS = (5, 17, 23)
#: mean and standard deviation agree with scipy's to float64 rounding: a few ulps of the
#: values (scipy sums in another order).
FLOAT_RTOL = 1e-12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image(path, shape, dtype):
    """A 2-channel CZYX TIFF of random values; returns the array."""
    rng = np.random.default_rng(5)
    values = rng.integers(0, 60_000, (2, *shape)) if dtype == np.uint16 else \
        rng.normal(100.0, 30.0, (2, *shape))
    image = values.astype(dtype)
    tifffile.imwrite(path, image, metadata={"axes": "CZYX"})
    return image


def _config(tmp_path, candidates, report="report.html", **measure):
    raw = {"input": {"prediction": str(candidates)},
           "output": {"labels": str(tmp_path / "label.h5"), "work_dir": str(tmp_path / "work"),
                      "report": report and str(tmp_path / report)},
           "nms": {"tile_shape": [None, 24, 24]},
           "labeling": {"chunk_shape": list(ODD_CHUNKS)}, "measure": measure}
    path = tmp_path / "hpc.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load(HpcConfig, path)


@pytest.fixture(scope="module")
def measured_run(tmp_path_factory, nuclei_candidates):
    """One run measuring a 2-channel image (uint16 intensities); its folder, image, uint32
    labels and intensity table."""
    folder = tmp_path_factory.mktemp("measured")
    shape = h5py.File(nuclei_candidates, "r").attrs["image_shape"]
    image = _image(folder / "image.tif", tuple(shape), np.uint16)
    config = _config(folder, nuclei_candidates, image=str(folder / "image.tif"), axes="CZYX")
    with pytest.MonkeyPatch.context() as patch:
        patch_tasks_in_process(patch)
        hpc.run(config)
    with h5py.File(folder / "label.h5", "r") as f:
        return folder, image, f["labels"][()], f["intensities"][()]


def _reference(labels, channel):
    """scipy.ndimage's statistics of every object id 1..max."""
    ids = np.arange(1, labels.max() + 1)
    return {"count": ndimage.sum_labels(np.ones_like(labels), labels, ids),
            "sum": ndimage.sum_labels(channel, labels, ids),
            "min": ndimage.minimum(channel, labels, ids),
            "max": ndimage.maximum(channel, labels, ids),
            "mean": ndimage.mean(channel, labels, ids),
            "std": ndimage.standard_deviation(channel, labels, ids)}


def test_intensities_equal_scipy_and_skimage_on_the_whole_volume(measured_run):
    _, image, labels, table = measured_run
    assert len(table) == labels.max() > 10
    np.testing.assert_array_equal(table["label_id"], np.arange(1, len(table) + 1))
    for c in (0, 1):
        expected = _reference(labels, image[c].astype(np.float64))
        np.testing.assert_array_equal(table["voxel_count"], expected["count"])
        for statistic in ("sum", "min", "max", "mean"):   # exact for an integer image
            np.testing.assert_array_equal(table[column_name(statistic, c)], expected[statistic])
        np.testing.assert_allclose(table[column_name("std", c)], expected["std"],
                                   rtol=FLOAT_RTOL)
        props = regionprops_table(labels, image[c], properties=(
            "label", "intensity_mean", "intensity_min", "intensity_max"))
        np.testing.assert_array_equal(props["label"], table["label_id"])
        np.testing.assert_allclose(table[column_name("mean", c)], props["intensity_mean"],
                                   rtol=FLOAT_RTOL)
        np.testing.assert_array_equal(table[column_name("min", c)], props["intensity_min"])
        np.testing.assert_array_equal(table[column_name("max", c)], props["intensity_max"])


def test_tsv_beside_label_file_equals_the_table(measured_run):
    folder, _, _, table = measured_run
    read = np.genfromtxt(folder / "intensities.tsv", delimiter="\t", names=True)
    assert read.dtype.names == table.dtype.names
    for name in table.dtype.names:
        np.testing.assert_array_equal(read[name], table[name])


def test_float_image_to_float64_rounding(tmp_path, nuclei_candidates, in_process):
    shape = tuple(h5py.File(nuclei_candidates, "r").attrs["image_shape"])
    image = _image(tmp_path / "float.tif", shape, np.float32)
    hpc.run(_config(tmp_path, nuclei_candidates, None, image=str(tmp_path / "float.tif"),
                    axes="CZYX", channels=[1]))
    with h5py.File(tmp_path / "label.h5", "r") as f:
        labels, table = f["labels"][()], f["intensities"][()]
    assert [n for n in table.dtype.names if n.endswith("ch0")] == []
    expected = _reference(labels, image[1].astype(np.float64))
    for statistic in ("min", "max"):
        np.testing.assert_array_equal(table[column_name(statistic, 1)], expected[statistic])
    for statistic in ("sum", "mean", "std"):
        np.testing.assert_allclose(table[column_name(statistic, 1)], expected[statistic],
                                   rtol=FLOAT_RTOL)


def test_chan_merge_of_random_parts_equals_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(1e6, 3.0, 1000)   # a large mean: the naive sum of squares fails here
    cuts = np.sort(rng.choice(np.arange(1, 1000), 6, replace=False))
    merge = IntensityMerge(1, (0,))
    for part in np.split(values, cuts):
        mean = part.mean()
        merge.add(np.array([1]), np.array([len(part)]), ChunkIntensities(*(
            np.array([[x]]) for x in (mean, ((part - mean) ** 2).sum(), part.min(), part.max(),
                                      part.sum()))))
    stats = merge.columns()[0]
    np.testing.assert_allclose(stats["std"], values.std(), rtol=1e-9)
    np.testing.assert_allclose(stats["mean"], values.mean(), rtol=1e-15)


def test_previews_equal_projections_of_the_whole_volume():
    rng = np.random.default_rng(1)
    shape = (11, 1100, 37)   # y is sampled with step 3
    labels = rng.integers(0, 50, shape).astype(np.uint32)
    merge = PreviewMerge(shape)
    for box in Grid(shape, (4, 250, 16)):
        merge.add(box, preview_chunk(shape, box, labels[box.slices()]))
    _, sy, sx = preview_steps(shape)
    assert sy == 3
    np.testing.assert_array_equal(merge.projections["z"], labels.max(axis=0)[::sy, ::sx])
    np.testing.assert_array_equal(merge.projections["y"], labels.max(axis=1)[:, ::sx])
    np.testing.assert_array_equal(merge.projections["x"], labels.max(axis=2)[:, ::sy])
    for z, plane in merge.planes.items():
        np.testing.assert_array_equal(plane, labels[z, ::sy, ::sx])


def _objects(lo, hi):
    table = np.zeros(len(lo), [(f"{a}{e}", "i8") for a in "zyx" for e in "01"]
                     + [("voxel_count", "i8")])
    for axis, name in enumerate("zyx"):
        table[f"{name}0"], table[f"{name}1"] = lo[:, axis], hi[:, axis]
    table["voxel_count"] = 1
    return table


def test_seam_check_is_one_without_seams_and_shows_duplicates_at_tile_boundaries():
    rng = np.random.default_rng(2)
    shape, tiles = (10, 400, 400), (None, 100, 100)
    lo = rng.integers(0, 395, (20_000, 3)) % np.array(shape)
    objects = _objects(lo, lo + 5)
    rows = {(r["family"], r["axis"]): r for r in seam_table(objects, shape, tiles, (10, 80, 80))}
    assert set(rows) == {("tile", "y"), ("tile", "x"), ("chunk", "y"), ("chunk", "x")}
    for row in rows.values():
        assert abs(row["excess"] - 1) < 4 * row["error"]
    # every object meeting y = 100, 200 or 300 rendered twice, as a broken tiling would
    touching = np.any([(objects["y0"] <= b) & (objects["y1"] >= b) for b in (100, 200, 300)],
                      axis=0)
    doubled = np.concatenate([objects, objects[touching]])
    row = next(r for r in seam_table(doubled, shape, tiles, (10, 80, 80))
               if (r["family"], r["axis"]) == ("tile", "y"))
    assert row["excess"] > 1.8


class _Figures(HTMLParser):
    """Ids of figures and the panels inside each: ``("svg", None)`` for an inline chart,
    ``("img", src)`` for a picture."""

    def __init__(self):
        super().__init__()
        self.figures, self.current, self.sections = {}, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.current = attrs["id"]
            self.figures[self.current] = []
        elif tag in ("img", "svg") and self.current is not None:
            self.figures[self.current].append((tag, attrs.get("src")))
        elif tag == "section":
            self.sections.append(attrs["id"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self.current = None


def _parse(path):
    parser = _Figures()
    parser.feed(path.read_text())
    parser.close()
    return parser


def _is_png(src):
    prefix = "data:image/png;base64,"
    return src.startswith(prefix) and base64.b64decode(src[len(prefix):]).startswith(
        PNG_SIGNATURE)


def test_extras_merge_in_chunk_order_whatever_order_the_tasks_finish(measured_run,
                                                                     nuclei_candidates):
    """The driver merges each chunk's extras as the labeling tasks finish (from their
    results, or from the checkpoints of chunks rendered before), but always in chunk order:
    the float sums, and so the intensity table, do not depend on the finish."""
    folder = measured_run[0]
    config = _config(folder, nuclei_candidates, image=str(folder / "image.tif"), axes="CZYX")
    with h5py.File(folder / "label.h5", "r") as f:
        n_objects = len(f["objects"])
    params = hpc.resolve_params(config, hpc.CandidateFile(nuclei_candidates))
    indices = sorted(int(p.stem) for p in params.chunk_dir.glob("*.npz"))
    from_checkpoints = ExtrasCollector(params, indices, n_objects)
    from_checkpoints.rendered_before(indices)
    backwards = ExtrasCollector(params, indices, n_objects)
    # what the labeling tasks returned, as they return it
    results = [checkpointed_chunk(params.chunk_dir, index) for index in indices]
    for result in reversed(results[1:]):
        backwards.rendered([result])
    with pytest.raises(RuntimeError, match=f"chunk {indices[0]}'s extras were not merged"):
        backwards.summary()
    backwards.rendered(results[:1])
    merged = [collector.summary() for collector in (from_checkpoints, backwards)]
    for name in ("count", "sum", "mean", "m2", "min", "max"):
        assert np.array_equal(getattr(merged[0].intensities, name),
                              getattr(merged[1].intensities, name))
    assert merged[0].render_seconds == merged[1].render_seconds


def test_report_has_every_figure_embedded(measured_run):
    folder = measured_run[0]
    report = _parse(folder / "report.html")
    assert report.sections == ["summary", *FIGURES, *MEASURE_FIGURES]
    assert list(report.figures) == [f"fig-{name}" for name in (*FIGURES, *MEASURE_FIGURES)]
    kinds = {name: [tag for tag, _ in panels] for name, panels in report.figures.items()}
    assert kinds == {"fig-projections": ["img"] * 3, "fig-objects": ["svg"] * 2,
                     "fig-tiles": ["svg"] * 3, "fig-seams": ["svg"], "fig-times": ["svg"] * 2,
                     "fig-planes": ["img"] * len(kinds["fig-planes"]),
                     "fig-intensities": ["svg"] * 2}
    assert kinds["fig-planes"] and all(
        _is_png(src) for panels in report.figures.values() for tag, src in panels if src)
    assert "http" not in (folder / "report.html").read_text().replace("http-equiv", "")


def test_without_measure_no_table_and_report_null_writes_none(tmp_path, nuclei_candidates,
                                                              in_process):
    config = _config(tmp_path, nuclei_candidates)
    hpc.run(config)
    assert list(_parse(tmp_path / "report.html").figures) == [f"fig-{n}" for n in FIGURES]
    with h5py.File(tmp_path / "label.h5", "r") as f:
        assert "intensities" not in f
    assert not (tmp_path / "intensities.tsv").exists()
    (tmp_path / "report.html").unlink()
    hpc.run(dataclasses.replace(config, output=dataclasses.replace(config.output, report=None)))
    assert not (tmp_path / "report.html").exists()


def test_measuring_other_channels_renders_the_chunks_again(tmp_path, nuclei_candidates,
                                                           in_process):
    shape = tuple(h5py.File(nuclei_candidates, "r").attrs["image_shape"])
    _image(tmp_path / "image.tif", shape, np.uint16)
    measure = {"image": str(tmp_path / "image.tif"), "axes": "CZYX"}
    hpc.run(_config(tmp_path, nuclei_candidates, None, **measure, channels=[0]))
    hpc.run(_config(tmp_path, nuclei_candidates, None, **measure, channels=[1]))
    with h5py.File(tmp_path / "label.h5", "r") as f:
        names = f["intensities"].dtype.names
    assert column_name("mean", 1) in names and column_name("mean", 0) not in names


@pytest.mark.parametrize("measure, message", [
    ({"image": "missing.tif"}, "measure.image: file"),
    ({"image": "small.tif"}, "measure.image: expected an image of the label volume's shape"),
    ({"image": "image.tif", "axes": "CZYX", "channels": [0, 2]},
     "measure.channels: expected channel indices 0..1"),
    ({"image": "image.tif"}, "measure.axes: a 4D image needs its axes"),
])
def test_measure_section_is_checked_at_start_up(tmp_path, nuclei_candidates, measure, message):
    shape = tuple(h5py.File(nuclei_candidates, "r").attrs["image_shape"])
    _image(tmp_path / "image.tif", shape, np.uint16)
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((4, 6, 7), np.uint16),
                     photometric="minisblack")
    measure = {**measure, "image": str(tmp_path / measure["image"])}
    with pytest.raises(UserError, match=message):
        hpc.resolve_params(_config(tmp_path, nuclei_candidates, **measure),
                           hpc.CandidateFile(nuclei_candidates))


def test_intensity_columns_are_documented():
    text = (Path(__file__).parents[1] / "doc" / "file_formats.md").read_text()
    assert [s for s in STATISTICS if f"`{column_name(s, '{c}')}`" not in text] == []
