"""Lazy reading of one channel (or a few) of a 3D image from large files, region by region.

The whole volume is never loaded: every backend gives an array that reads only the slices asked
for (a memory map or zarr view of a TIFF, an HDF5 dataset, a zarr array).

Supported files, chosen by suffix (case-insensitive):

``.tif`` / ``.tiff``
    TIFF and BigTIFF, memory-mapped when the pixels are stored uncompressed and contiguously,
    otherwise read through tifffile's zarr view (full-resolution level of pyramidal files).
``.h5`` / ``.hdf5``
    The dataset named by ``image.dataset``, or the only 3D/4D dataset when it is null.
``.ims``
    Imaris: ``DataSet/ResolutionLevel 0/TimePoint 0/Channel {channel}/Data``, cropped to the true
    image size of ``DataSetInfo/Image`` (Imaris pads the stored array). The layout is fixed, so
    ``image.axes`` and ``image.dataset`` are ignored (with a warning when set).
``.zarr``
    A directory store holding an array, or a group in which ``image.dataset`` names the array
    (null: the only 3D/4D array).

``image.axes`` names the stored axes with the letters T, C, Z, Y, X (null: a 3D array is ZYX).
``image.channel`` is picked along C (a list picks several, for a multi-channel model: regions
then have a trailing channel axis in the list's order, as StarDist expects); a T axis must have
size 1. Regions are returned in z, y, x (, c) order whatever the stored order. Every bad input
raises a one-line :class:`~stardist_hpc.errors.UserError` naming the config key at fault.
"""
from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import tifffile

from ..config import MISSING_CHUNKS_ERROR
from ..errors import UserError, did_you_mean

logger = logging.getLogger(__name__)

ZYX = "ZYX"
#: every axis letter ``image.axes`` may use: time, channel and the three spatial axes.
AXIS_LETTERS = "TCZYX"
#: axes examples in the error asking for ``image.axes``, by number of dimensions.
AXES_EXAMPLES = {4: "CZYX or ZCYX", 5: "TCZYX or TZCYX"}
#: dataset ranks picked automatically when ``image.dataset`` is null: ZYX, or ZYX with C.
AUTO_NDIMS = (3, 4)
#: numpy dtype kinds accepted as image data: unsigned and signed integers, floats.
NUMERIC_KINDS = "uif"
#: names listed at most in an error message about a wrong dataset name.
MAX_LISTED = 20

IMARIS_TIMEPOINT = "DataSet/ResolutionLevel 0/TimePoint 0"
IMARIS_CHANNEL = "Channel {}"
IMARIS_INFO = "DataSetInfo/Image"

#: what h5py, tifffile and zarr raise for unreadable or corrupt files (zarr's errors are
#: ValueErrors, tifffile's TiffFileError too).
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


class Volume:
    """One channel (or several) of a 3D image, read lazily region by region; create it with
    `open_volume`.

    Parameters
    ----------
    path : Path
        The image file.
    array : array-like
        Stored array supporting numpy basic slicing (memory map, h5py dataset, zarr array).
    axes : str
        Letters of the stored axes, e.g. ``"ZCYX"``.
    channel : int or tuple of int
        Index along the C axis (unused without one); a tuple reads those channels into a
        trailing channel axis.
    shape : tuple of int
        Size (z, y, x) of the image; smaller than the stored array when that is padded.
    close : callable
        Releases the file.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        (z, y, x).
    channel : int or tuple of int
    n_channels : int
        Channels of a region: 1, or the length of a tuple ``channel``.
    dtype : numpy.dtype
        The stored dtype, which `read` returns.
    stored_channels : int
        Channels of the file (1 without a C axis).
    """

    def __init__(self, path, array, axes, channel, shape, close, stored_channels=1):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.stored_channels = int(stored_channels)
        self.dtype = np.dtype(array.dtype)
        self._array = array
        self._close = close
        self._axes = axes
        self.channel = channel
        self.n_channels = len(channel) if isinstance(channel, tuple) else 1
        kept = [axis for axis in axes if axis in ZYX]
        self._order = tuple(kept.index(axis) for axis in ZYX)

    def read(self, lo, hi):
        """Read the region ``[lo, hi)``.

        Parameters
        ----------
        lo, hi : sequence of 3 int
            Region start (inclusive) and stop (exclusive) in z, y, x, within `shape`.

        Returns
        -------
        ndarray
            Writable, C-contiguous array of shape ``hi - lo`` (followed by `n_channels` when
            ``channel`` is a tuple) and dtype `dtype`.

        Raises
        ------
        UserError
            If the region cannot be read, or holds NaN or inf values.
        """
        spans = self._spans(lo, hi)
        if isinstance(self.channel, tuple):   # np.stack copies: C-contiguous and writable
            region = np.stack([self._read_channel(spans, c) for c in self.channel], axis=-1)
        else:
            region = self._read_channel(spans, self.channel)
        _check_finite(region, spans, self.path)
        if region.flags.c_contiguous and region.flags.writeable:
            return region
        # memory-mapped regions are read-only views of the file, transposed ones are strided
        return np.array(region, order="C")

    def _read_channel(self, spans, channel):
        """Region ``spans`` of one channel, in z, y, x order (T is checked to have size 1)."""
        fixed = {"C": channel, "T": 0}
        index = tuple(spans[axis] if axis in ZYX else fixed[axis] for axis in self._axes)
        with _reading(self.path):
            return np.asarray(self._array[index]).transpose(self._order)

    def channel_volume(self, i):
        """The Volume of the ``i``-th of the channels this volume reads (for per-channel
        normalisation); it shares the file, which stays this volume's to close."""
        channel = self.channel[i] if isinstance(self.channel, tuple) else self.channel
        return Volume(self.path, self._array, self._axes, channel, self.shape,
                      _nothing_to_close)

    def _spans(self, lo, hi):
        """Slices (by axis letter) of region ``[lo, hi)``, checked to lie in the image."""
        if self._array is None:
            raise ValueError(f"volume {self.path} is closed")
        lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
        if not (len(lo) == len(hi) == len(ZYX)
                and all(0 <= a <= b <= n for a, b, n in zip(lo, hi, self.shape))):
            raise ValueError(f"region [{lo}, {hi}) is not inside the image of shape {self.shape}")
        return {axis: slice(a, b) for axis, a, b in zip(ZYX, lo, hi)}

    def close(self):
        """Release the file; further reads fail. Closing twice does nothing."""
        if self._array is not None:
            self._array = None
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"Volume({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


#: what names an image held in memory where a file path would stand (logs, candidate file).
ARRAY_SOURCE = "<array>"


def array_volume(array, *, channel=0, axes=None):
    """One channel of an array-like image (numpy, zarr, dask, h5py dataset), read lazily.

    Parameters
    ----------
    array : array-like
        Supports ``shape``, ``dtype``, ``ndim`` and numpy basic slicing.
    channel : int
        Index along the C axis, if ``axes`` has one.
    axes : str, optional
        Letters of the array's axes, e.g. ``"CZYX"`` (None: a 3D array is ZYX).

    Returns
    -------
    Volume

    Raises
    ------
    UserError
        For an object that is not an array, or a layout, dtype or channel that does not fit.
    """
    if not all(hasattr(array, a) for a in ("shape", "dtype", "__getitem__")):
        raise UserError(f"image: expected a path or an array-like (numpy, zarr, dask, h5py), "
                        f"got {type(array).__name__}")
    return _volume(Path(ARRAY_SOURCE), _Stored(array, axes, channel, _nothing_to_close))


def open_volume(image):
    """Open one channel of a 3D image for lazy reading.

    Parameters
    ----------
    image : ImageSection
        ``path``, ``dataset``, ``channel`` and ``axes`` of the image (see the module docstring).

    Returns
    -------
    Volume
        Close it (or use it as a context manager) to release the file.

    Raises
    ------
    UserError
        For a missing, unsupported or unreadable file, or keys that do not fit the image.
    """
    path = Path(image.path)
    opener = _opener(path)
    with _reading(path):
        stored = opener(path, image)
    return _volume(path, stored)


def _volume(path, stored):
    """The Volume of an opened array, after checking its layout (closing it if unusable)."""
    with _closing_on_error(stored.close):
        axes, shape = _layout(stored)
    stored_channels = (stored.stored_channels
                       or dict(zip(axes, stored.array.shape)).get("C", 1))
    volume = Volume(path, stored.array, axes, stored.channel, shape, stored.close,
                    stored_channels)
    logger.info("opened %s: image shape %s, dtype %s, stored shape %s as %s, channel %s",
                path, volume.shape, volume.dtype, tuple(stored.array.shape), axes, stored.channel)
    return volume


# ---------------------------------------------------------------------------------------------
# opening files


@dataclass
class _Stored:
    """An opened array with the axes and channel to read it with, before validation."""
    array: Any
    axes: str | None  # None: guess from the number of dimensions
    channel: int | tuple
    close: Callable[[], None]
    size: tuple | None = None  # true (z, y, x) size of a padded array
    stored_channels: int | None = None  # channels stored apart (Imaris); None: C's size


def _nothing_to_close():
    """Close function of backends holding no open file handle between reads."""


@contextmanager
def _reading(path):
    """Turn a library's error about an unreadable file into a one-line `UserError`."""
    try:
        yield
    except _READ_ERRORS as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"image.path: cannot read {path}: {detail}") from error


@contextmanager
def _closing_on_error(close):
    """Call ``close`` when the block raises, so that a rejected file does not stay open."""
    try:
        yield
    except BaseException:
        close()
        raise


def _opener(path):
    """The function opening ``path``, chosen by its suffix."""
    if not path.exists():
        raise UserError(f"image.path: file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in _OPENERS:
        raise UserError(f"image.path: expected a file ending in {', '.join(_OPENERS)}, "
                        f"got {path}" + did_you_mean(suffix, _OPENERS))
    return _OPENERS[suffix]


def _warn_ignored(image, keys, kind):
    """Log a warning for each of the config ``keys`` that is set but means nothing for ``kind``."""
    for key in keys:
        if getattr(image, key) is not None:
            logger.warning("image.%s is ignored for %s (%s)", key, kind, image.path)


def _open_tiff(path, image):
    """Memory-map a TIFF file, or view it through zarr when its pixels cannot be mapped."""
    _warn_ignored(image, ("dataset",), "TIFF files")
    try:
        array = tifffile.memmap(path, mode="r")
    except tifffile.TiffFileError:  # not a TIFF at all: no fallback, `_reading` reports it
        raise
    except ValueError as error:  # compressed, tiled or non-contiguous pixel data, or truncated
        _check_tiff_length(path)
        logger.debug("%s is not memory-mappable (%s); reading it through zarr", path, error)
        return _open_tiff_zarr(path, image)
    # the map is released with the last reference to it; closing it early would invalidate views
    return _Stored(array, image.axes, image.channel, _nothing_to_close)


def _check_tiff_length(path):
    """Check that a TIFF with contiguous pixel data holds all the bytes its header promises.

    A truncated file (an interrupted copy) cannot be memory-mapped; read through zarr, its
    missing pixels would fail only when their block is read, with a less helpful message.
    """
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0].levels[0]
        # compressed or tiled data: decoding reports what is missing; no data: the image is
        # empty, which the layout check reports
        if series.dataoffset is None or not series.nbytes:
            return
        needed = series.dataoffset + series.nbytes
    size = path.stat().st_size
    if size < needed:
        raise UserError(f"image.path: {path} is truncated: expected {needed} bytes of header "
                        f"and pixel data, got a file of {size} bytes")


def _open_tiff_zarr(path, image):
    """View a TIFF file through zarr: only the tiles or strips of a region are decoded."""
    import zarr  # only where an image is read: the HPC step's workers need it only to measure
    store = tifffile.imread(path, aszarr=True, level=0)  # level 0: full resolution of a pyramid
    with _closing_on_error(store.close):
        array = zarr.open(store, mode="r")
    return _Stored(array, image.axes, image.channel, store.close)


def _open_h5(path, image):
    """Open the dataset of an HDF5 file named by ``image.dataset`` (or the only 3D/4D one)."""
    file = h5py.File(path, "r")
    with _closing_on_error(file.close):
        if image.dataset is not None and isinstance(file.get(image.dataset), h5py.Dataset):
            dataset = file[image.dataset]  # also reaches datasets behind links, unlike listing
        else:
            dataset = _pick_array(_h5_datasets(file), image.dataset, path)
    return _Stored(dataset, image.axes, image.channel, file.close)


def _h5_datasets(file):
    """All datasets of an HDF5 file, by path."""
    found = {}

    def collect(name, node):
        if isinstance(node, h5py.Dataset):
            found[name] = node  # returning None keeps visititems going

    file.visititems(collect)
    return found


def _open_zarr(path, image):
    """Open a zarr array, or the array of a zarr group named by ``image.dataset``."""
    import zarr  # see _open_tiff_zarr
    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Group):
        arrays = {name: member for name, member in node.members(max_depth=None)
                  if isinstance(member, zarr.Array)}
        node = _pick_array(arrays, image.dataset, path)
    else:
        _warn_ignored(image, ("dataset",), "a zarr array (not a group)")
    if image.missing_chunks == MISSING_CHUNKS_ERROR:
        _check_chunks_stored(node, path)
    return _Stored(node, image.axes, image.channel, _nothing_to_close)


def _check_chunks_stored(array, path):
    """Refuse a zarr array with chunks missing from its store, naming the first one.

    zarr reads a missing chunk as its fill value, so an interrupted copy would silently
    become background. Stores written with ``write_empty_chunks=False`` omit chunks of fill
    values on purpose: ``image.missing_chunks: fill`` accepts them.
    """
    n_stored, n_chunks = array.nchunks_initialized, array.nchunks
    if n_stored == n_chunks:
        return
    first = next((coords for coords in itertools.product(*map(range, array.cdata_shape))
                  if not (Path(path) / array.path / array.metadata.encode_chunk_key(coords))
                  .exists()), None)
    where = f"chunk {'.'.join(map(str, first))}" if first is not None else "chunks"
    raise UserError(f"image.path: expected every chunk of the zarr array in {path}, got "
                    f"{n_chunks - n_stored} of {n_chunks} missing ({where} first; an "
                    "interrupted copy?): copy the store again, or set image.missing_chunks: "
                    "fill if chunks of the fill value were left out on purpose")


def _pick_array(arrays, name, path):
    """The array called ``name`` in ``arrays`` (name -> array), or the only 3D/4D one if None."""
    if name is not None:
        key = name.strip("/")  # h5py and zarr list names without the leading slash
        if key not in arrays:
            raise UserError(f"image.dataset: expected one of {_listing(sorted(arrays))} in "
                            f"{path}, got {name!r}" + did_you_mean(key, arrays))
        return arrays[key]
    candidates = sorted(key for key, array in arrays.items() if array.ndim in AUTO_NDIMS)
    if len(candidates) == 1:
        return arrays[candidates[0]]
    if candidates:
        raise UserError(f"image.dataset: expected one of {_listing(candidates)}, got null "
                        f"({path} has several 3D/4D datasets)")
    shapes = {key: tuple(array.shape) for key, array in sorted(arrays.items())}
    raise UserError(f"image.dataset: expected the name of a dataset, got null ({path} has no "
                    f"3D/4D dataset to pick; datasets: {_listing(shapes, shapes) or 'none'})")


def _listing(names, shapes=None):
    """Comma-separated quoted ``names`` (each followed by its shape, if given), capped."""
    names = list(names)
    items = [repr(n) + (f" {shapes[n]}" if shapes else "") for n in names[:MAX_LISTED]]
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(items) + more


# ---------------------------------------------------------------------------------------------
# Imaris


def _open_ims(path, image):
    """Open one channel (or several) of an Imaris file, with the true image size to crop its
    padding to."""
    _warn_ignored(image, ("dataset", "axes"), "Imaris files")
    file = h5py.File(path, "r")
    with _closing_on_error(file.close):
        several = isinstance(image.channel, tuple)
        if several:   # one dataset per channel: stacked along C
            datasets = [_imaris_channel(file, c, path) for c in image.channel]
            data, n_channels = _ChannelStack([d for d, _ in datasets], path), datasets[0][1]
        else:
            data, n_channels = _imaris_channel(file, image.channel, path)
        size = _imaris_size(file, path)
        _check_empty(size)
        zyx = data.shape[-len(ZYX):]
        if data.ndim != len(ZYX) + several or any(s > n for s, n in zip(size, zyx)):
            raise UserError(f"image.path: expected Imaris data of at least the image size {size} "
                            f"in {path}, got shape {zyx if several else data.shape}")
    channels = tuple(range(len(image.channel))) if several else 0
    return _Stored(data, "C" + ZYX if several else ZYX, channels, file.close, size=size,
                   stored_channels=n_channels)


class _ChannelStack:
    """Datasets of equal shape and dtype (Imaris channels) read as one array with a leading
    C axis; indexed with an integer channel first, as `Volume` indexes it."""

    def __init__(self, datasets, path):
        first = datasets[0]
        if any(d.shape != first.shape or d.dtype != first.dtype for d in datasets):
            raise UserError(f"image.channel: expected channels of one shape and dtype in the "
                            f"Imaris file {path}, got "
                            f"{', '.join(f'{d.shape} {d.dtype}' for d in datasets)}")
        self._datasets = datasets
        self.shape, self.dtype, self.ndim = (len(datasets), *first.shape), first.dtype, 4

    def __getitem__(self, index):
        return self._datasets[index[0]][index[1:]]


def _imaris_group(file, name, path):
    """Group ``name`` of an Imaris file, which every Imaris file has."""
    group = file.get(name)
    if not isinstance(group, h5py.Group):
        raise UserError(f"image.path: expected an Imaris file with group '{name}', got {path}")
    return group


def _imaris_channel(file, channel, path):
    """Full-resolution data of ``channel`` at the first time point, and the channel count."""
    timepoint = _imaris_group(file, IMARIS_TIMEPOINT, path)
    prefix = IMARIS_CHANNEL.format("")
    count = sum(name.startswith(prefix) for name in timepoint)
    if not count:
        raise UserError(f"image.path: expected channel groups '{prefix}0'... in "
                        f"'{IMARIS_TIMEPOINT}' of the Imaris file {path}, got none")
    _check_channel(channel, count)
    name = f"{IMARIS_CHANNEL.format(channel)}/Data"
    data = timepoint.get(name)
    if not isinstance(data, h5py.Dataset):
        raise UserError(f"image.path: expected a dataset '{IMARIS_TIMEPOINT}/{name}' in the "
                        f"Imaris file {path}, got {type(data).__name__ if data else 'none'}")
    return data, count


def _imaris_size(file, path):
    """True image size (z, y, x) from the attributes X, Y, Z of ``DataSetInfo/Image``."""
    attrs = _imaris_group(file, IMARIS_INFO, path).attrs
    return tuple(_imaris_int(attrs, axis, path) for axis in ZYX)


def _imaris_int(attrs, name, path):
    """Integer attribute stored the Imaris way, as one-byte strings, e.g. [b'1', b'2', b'8']."""
    chars = np.atleast_1d(attrs.get(name, []))
    text = "".join(c.decode() if isinstance(c, bytes) else str(c) for c in chars)
    if not (text.isascii() and text.isdigit()):
        raise UserError(f"image.path: expected a whole number in attribute {name} of "
                        f"'{IMARIS_INFO}' in {path}, got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------------------
# checking the stored array against image.axes and image.channel


def _layout(stored):
    """Check the stored array; return its axes letters and the (z, y, x) image size."""
    shape = tuple(int(n) for n in stored.array.shape)
    _check_ndim(shape)
    _check_empty(shape)
    _check_dtype(stored.array.dtype)
    axes = _parse_axes(stored.axes, shape)
    sizes = dict(zip(axes, shape))
    if sizes.get("T", 1) != 1:
        raise UserError(f"image.axes: expected a T axis of size 1 (one time point), "
                        f"got {sizes['T']} time points in shape {shape}")
    _check_channel(stored.channel, sizes.get("C"))
    return axes, stored.size or tuple(sizes[axis] for axis in ZYX)


def _check_ndim(shape):
    """Check for 3 spatial axes, plus at most T and C."""
    if not len(ZYX) <= len(shape) <= len(AXIS_LETTERS):
        raise UserError(f"image.path: expected a 3D image (up to 5D with T and C axes), "
                        f"got shape {shape}")


def _check_empty(shape):
    """Check that no axis has size 0."""
    if 0 in shape:
        raise UserError(f"image.path: the image is empty: shape {tuple(shape)}; expected at "
                        "least one voxel along every axis")


def _check_finite(region, spans, path):
    """Check that a region read from ``path`` holds no NaN or inf.

    Every region is checked as it is read, because the normalisation sample sees only part of
    the image; a NaN would otherwise spread through the network into the candidates.
    """
    if region.dtype.kind == "f" and not np.isfinite(region).all():
        where = ", ".join(f"{axis.lower()} {s.start}:{s.stop}" for axis, s in spans.items())
        raise UserError(f"image.path: image {path} contains NaN or inf values (in the region "
                        f"{where}); expected finite pixel values: replace them, e.g. with 0, "
                        "before prediction")


def _check_dtype(dtype):
    """Check for pixel values StarDist can normalize: integers or floats."""
    if np.dtype(dtype).kind not in NUMERIC_KINDS:
        raise UserError(f"image.path: expected an integer or float image, got dtype {dtype}")


def _check_channel(channel, count):
    """Check ``channel`` (or each of a tuple) against ``count`` channels (None: the image has
    no C axis)."""
    if isinstance(channel, tuple):
        if count is None:
            raise UserError(f"image.channel: expected one channel for an image without a C "
                            f"axis in image.axes, got the list {list(channel)}")
        for c in channel:
            _check_channel(c, count)
        return
    if count is None:
        if channel != 0:
            raise UserError(f"image.channel: expected 0 for an image without a C axis in "
                            f"image.axes, got {channel}")
    elif not 0 <= channel < count:
        expected, noun = ("0", "channel") if count == 1 else (f"0..{count - 1}", "channels")
        raise UserError(f"image.channel: expected {expected} for an image with {count} {noun}, "
                        f"got {channel}")


def _parse_axes(axes, shape):
    """Upper-case axes letters of an array of ``shape``, checked; ZYX for 3D when ``None``."""
    if axes is None:
        if len(shape) == len(ZYX):
            return ZYX
        raise UserError(f"image.axes: a {len(shape)}D image needs its axes, "
                        f"e.g. {AXES_EXAMPLES[len(shape)]}; got shape {shape}")
    letters = axes.upper()
    unknown = sorted(set(letters) - set(AXIS_LETTERS))
    if unknown:
        raise UserError(f"image.axes: expected letters of {AXIS_LETTERS}, got {axes!r} "
                        f"(unknown: {', '.join(unknown)})")
    if len(set(letters)) < len(letters):
        raise UserError(f"image.axes: expected each letter at most once, got {axes!r}")
    if not set(ZYX) <= set(letters):
        raise UserError(f"image.axes: expected Z, Y and X among the axes, got {axes!r}")
    if len(letters) != len(shape):
        raise UserError(f"image.axes: expected {len(shape)} letters for an image of shape "
                        f"{shape}, got {axes!r}")
    return letters


_OPENERS = {".tif": _open_tiff, ".tiff": _open_tiff, ".h5": _open_h5, ".hdf5": _open_h5,
            ".ims": _open_ims, ".zarr": _open_zarr}
