"""Lazy image reading: round trips of every format, channel and axes handling, user errors."""
import logging
import warnings

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from stardist_hpc.config import ImageSection
from stardist_hpc.errors import UserError
from stardist_hpc.io.image import Volume, open_volume

SHAPE = (7, 33, 20)
#: an odd region [LO, HI) that touches no border.
LO, HI = (1, 5, 3), (6, 28, 17)


@pytest.fixture
def data():
    return np.random.default_rng(0).integers(0, 60000, SHAPE, dtype=np.uint16)


@pytest.fixture
def two_channels(data):
    return np.stack([data, data[::-1] // 2])


def _image(path, **keys):
    return ImageSection(path=path, **keys)


def _assert_reads(image, expected):
    """``image`` opens with the shape and dtype of ``expected`` and reads it back exactly."""
    with open_volume(image) as volume:
        assert isinstance(volume, Volume)
        assert volume.shape == expected.shape and volume.dtype == expected.dtype
        full = volume.read((0, 0, 0), expected.shape)
        np.testing.assert_array_equal(full, expected)
        region = volume.read(LO, HI)
        np.testing.assert_array_equal(region, expected[tuple(map(slice, LO, HI))])
        assert region.flags.c_contiguous and region.flags.writeable
        assert volume.read(LO, LO).shape == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# writers: (directory, array) -> ImageSection keys of the written file


def _tif(tmp_path, array, **options):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, array, **options)
    return {"path": path}


def _h5(tmp_path, array, name="raw"):
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=array, chunks=True)
    return {"path": path}


def _zarr_array(tmp_path, array):
    path = tmp_path / "image.zarr"
    # chunks smaller than the array, so that regions span several of them
    zarr.create_array(str(path), data=array, chunks=tuple(max(1, n // 2) for n in array.shape))
    return {"path": path}


def _zarr_group(tmp_path, array, name="volumes/raw"):
    path = tmp_path / "image.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array(name, data=array)
    group.create_array("thumbnail", data=array[0])
    return {"path": path}


def _ims(tmp_path, channels, padding=(1, 7, 4)):
    """An Imaris file: padded channel arrays, true size as byte-character attributes."""
    path = tmp_path / "image.ims"
    size = channels.shape[1:]
    with h5py.File(path, "w") as f:
        for c, channel in enumerate(channels):
            padded = np.zeros([n + p for n, p in zip(size, padding)], channels.dtype)
            padded[:size[0], :size[1], :size[2]] = channel
            f[f"DataSet/ResolutionLevel 0/TimePoint 0/Channel {c}/Data"] = padded
        info = f.create_group("DataSetInfo/Image")
        for axis, n in zip("ZYX", size):
            info.attrs[axis] = np.array([c.encode() for c in str(n)], dtype="S1")
    return {"path": path}


WRITERS_3D = {
    "tif": _tif,
    "bigtiff": lambda d, a: _tif(d, a, bigtiff=True),
    "tif-zlib": lambda d, a: _tif(d, a, compression="zlib"),
    "tif-tiled": lambda d, a: _tif(d, a, tile=(16, 16)),
    "h5-auto": _h5,
    "h5-named": lambda d, a: {**_h5(d, a, "group/raw"), "dataset": "group/raw"},
    "zarr-array": _zarr_array,
    "zarr-group-auto": lambda d, a: {**_zarr_group(d, a), "dataset": None},
    "zarr-group-named": lambda d, a: {**_zarr_group(d, a), "dataset": "volumes/raw"},
}


@pytest.mark.parametrize("writer", WRITERS_3D)
def test_round_trip(tmp_path, data, writer):
    _assert_reads(_image(**WRITERS_3D[writer](tmp_path, data)), data)


def test_compressed_tiff_is_not_memory_mappable(tmp_path, data):
    path = _tif(tmp_path, data, compression="zlib")["path"]
    with pytest.raises(ValueError, match="memory-mappable"):
        tifffile.memmap(path, mode="r")


def test_float_and_upper_case_suffix(tmp_path, data):
    path = tmp_path / "IMAGE.TIFF"
    tifffile.imwrite(path, data.astype(np.float32))
    _assert_reads(_image(path), data.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# channels and axes


MULTICHANNEL_WRITERS = {"tif": _tif, "h5": _h5, "zarr": _zarr_array}


@pytest.mark.parametrize("writer", MULTICHANNEL_WRITERS)
@pytest.mark.parametrize("axes", ["CZYX", "ZCYX"])
@pytest.mark.parametrize("channel", [0, 1])
def test_channel_selection(tmp_path, two_channels, writer, axes, channel):
    stored = two_channels if axes == "CZYX" else np.moveaxis(two_channels, 0, 1)
    keys = MULTICHANNEL_WRITERS[writer](tmp_path, stored)
    _assert_reads(_image(**keys, axes=axes, channel=channel), two_channels[channel])


#: stored arrays by axes (any order, lower case, T of size 1), made from the two channels
AXES_CASES = {
    "XYZ": lambda channels: channels[0].transpose(2, 1, 0),
    "yxz": lambda channels: channels[0].transpose(1, 2, 0),
    "TZYX": lambda channels: channels[:1],
    "ZTCYX": lambda channels: np.moveaxis(channels, 0, 1)[:, None],  # 5D: named, not picked
}


@pytest.mark.parametrize("axes", AXES_CASES)
def test_any_axes_order(tmp_path, two_channels, axes):
    channel = int("C" in axes.upper())
    keys = {**_h5(tmp_path, AXES_CASES[axes](two_channels)), "dataset": "raw"}
    _assert_reads(_image(**keys, axes=axes, channel=channel), two_channels[channel])


@pytest.mark.parametrize("writer", [*MULTICHANNEL_WRITERS, "ims"])
def test_a_channel_list_reads_those_channels_last_in_its_order(tmp_path, two_channels, writer):
    if writer == "ims":
        keys = _ims(tmp_path, two_channels)
    else:
        keys = {**MULTICHANNEL_WRITERS[writer](tmp_path, np.moveaxis(two_channels, 0, 1)),
                "axes": "ZCYX"}
    region = tuple(map(slice, LO, HI))
    with open_volume(_image(**keys, channel=(1, 0))) as volume:
        assert volume.shape == SHAPE and volume.n_channels == 2
        read = volume.read(LO, HI)
        assert read.flags.c_contiguous and read.flags.writeable
        np.testing.assert_array_equal(read, np.stack([two_channels[1][region],
                                                      two_channels[0][region]], axis=-1))
        np.testing.assert_array_equal(volume.channel_volume(1).read(LO, HI),
                                      two_channels[0][region])


def test_imaris_crops_padding_and_selects_channel(tmp_path, two_channels, caplog):
    keys = _ims(tmp_path, two_channels)
    _assert_reads(_image(**keys, channel=1), two_channels[1])
    with caplog.at_level(logging.WARNING, logger="stardist_hpc.io.image"):
        _assert_reads(_image(**keys, axes="ZYX", dataset="raw"), two_channels[0])
    assert "image.axes is ignored" in caplog.text


def test_files_are_closed(tmp_path, data):
    keys = _h5(tmp_path, data)
    volume = open_volume(_image(**keys))
    volume.close()
    volume.close()
    with h5py.File(keys["path"], "a"):  # fails while another handle reads the file
        pass
    with pytest.raises(ValueError, match="closed"):
        volume.read((0, 0, 0), (1, 1, 1))
    with pytest.raises(UserError):
        open_volume(_image(**keys, dataset="nope"))
    with h5py.File(keys["path"], "a"):  # the rejected file was closed too
        pass


def test_corrupt_data_found_while_reading(tmp_path, data):
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("raw", data=data, chunks=(4, 16, 16), compression="gzip")
        first_chunk = dataset.id.get_chunk_info(0)
    with open(path, "r+b") as file:
        file.seek(first_chunk.byte_offset)
        file.write(b"\xff" * first_chunk.size)
    with open_volume(_image(path)) as volume:
        volume.read((4, 0, 0), (5, 5, 5))  # the intact chunk still reads
        with pytest.raises(UserError, match="image.path: cannot read"):
            volume.read((0, 0, 0), SHAPE)


@pytest.mark.parametrize("lo, hi", [((0, 0, 0), (8, 1, 1)), ((-1, 0, 0), (1, 1, 1)),
                                    ((2, 0, 0), (1, 1, 1)), ((0, 0), (1, 1))])
def test_region_outside_the_image(tmp_path, data, lo, hi):
    with open_volume(_image(**_tif(tmp_path, data))) as volume:
        with pytest.raises(ValueError, match="not inside"):
            volume.read(lo, hi)


# ---------------------------------------------------------------------------------------------
# user errors: (make the image keys, config key named in the message, text in the message)


def _corrupt(name):
    def write(tmp_path):
        path = tmp_path / name
        path.write_bytes(b"not an image " * 16)
        return {"path": path}
    return write


def _imaris_without_info(tmp_path):
    keys = _ims(tmp_path, np.ones((1, 2, 3, 4), np.uint8))
    with h5py.File(keys["path"], "a") as f:
        del f["DataSetInfo"]
    return keys


def _empty_tif(tmp_path):
    with warnings.catch_warnings():  # tifffile warns that a TIFF of no pixels is unusual
        warnings.simplefilter("ignore", UserWarning)
        return _tif(tmp_path, np.zeros((0, 64, 64), np.uint8))


def _shaped(shape, dtype=np.uint8, **keys):
    return lambda tmp_path: {**_h5(tmp_path, np.zeros(shape, dtype)), **keys}


ERRORS = {
    "missing file": (lambda d: {"path": d / "nope.tif"}, "image.path", "does not exist"),
    "bad suffix": (_corrupt("image.png"), "image.path", ".tif, .tiff, .h5"),
    "corrupt tif": (_corrupt("image.tif"), "image.path", "cannot read"),
    "corrupt h5": (_corrupt("image.h5"), "image.path", "cannot read"),
    "corrupt ims": (_corrupt("image.ims"), "image.path", "cannot read"),
    "file named zarr": (_corrupt("image.zarr"), "image.path", "cannot read"),
    "not imaris": (lambda d: {"path": _h5(d, np.ones(SHAPE))["path"].rename(d / "x.ims")},
                   "image.path", "DataSet/ResolutionLevel 0/TimePoint 0"),
    "imaris without size": (_imaris_without_info, "image.path", "DataSetInfo/Image"),
    "imaris channel": (lambda d: {**_ims(d, np.ones((2, 2, 3, 4))), "channel": 5},
                       "image.channel", "expected 0..1 for an image with 2 channels, got 5"),
    "wrong h5 dataset": (lambda d: {**_h5(d, np.ones(SHAPE)), "dataset": "rwa"},
                         "image.dataset", "'raw' in"),
    "wrong zarr dataset": (lambda d: {**_zarr_group(d, np.ones(SHAPE)), "dataset": "volumes/rw"},
                           "image.dataset", "(did you mean 'volumes/raw'?)"),
    "no 3D dataset": (_shaped((3, 4)), "image.dataset", "'raw' (3, 4)"),
    "several 3D datasets": (lambda d: _zarr_group(d, np.ones((2, *SHAPE))), "image.dataset",
                            "'thumbnail', 'volumes/raw', got null"),
    "channel out of range": (_shaped((2, *SHAPE), axes="CZYX", channel=5), "image.channel",
                             "image.channel: expected 0..1 for an image with 2 channels, got 5"),
    "channel without C": (_shaped(SHAPE, channel=1), "image.channel",
                          "expected 0 for an image without a C axis"),
    "channel of one": (_shaped((1, *SHAPE), axes="CZYX", channel=1), "image.channel",
                       "expected 0 for an image with 1 channel, got 1"),
    "unknown axes": (_shaped(SHAPE, axes="ZYQ"), "image.axes", "unknown: Q"),
    "axes too long": (_shaped(SHAPE, axes="CZYX"), "image.axes", "expected 3 letters"),
    "duplicate axes": (_shaped((2, *SHAPE), axes="ZZYX"), "image.axes", "at most once"),
    "axes without Z": (_shaped((2, *SHAPE), axes="CTYX"), "image.axes", "Z, Y and X"),
    "several time points": (_shaped((2, *SHAPE), axes="TZYX"), "image.axes", "2 time points"),
    "4D without axes": (_shaped((2, 10, 20, 30)), "image.axes",
                        "image.axes: a 4D image needs its axes, e.g. CZYX or ZCYX; "
                        "got shape (2, 10, 20, 30)"),
    "2D": (_shaped((20, 30), dataset="raw"), "image.path", "got shape (20, 30)"),
    "empty": (_shaped((0, 64, 64)), "image.path", "image.path: the image is empty: "
                                                  "shape (0, 64, 64)"),
    "empty tif": (_empty_tif, "image.path", "the image is empty: shape (0, 64, 64)"),
    "strings": (_shaped(SHAPE, dtype="S1"), "image.path", "dtype |S1"),
    "complex": (_shaped(SHAPE, dtype=np.complex64), "image.path", "integer or float"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_user_errors(tmp_path, case):
    write, key, text = ERRORS[case]
    with pytest.raises(UserError) as caught:
        open_volume(_image(**write(tmp_path)))
    message = str(caught.value)
    assert message.startswith(key + ":") and text in message
    assert "\n" not in message
