"""Physical voxel size (z, y, x) of an image file, and how it is stored in prediction.h5.

Read from the metadata each format carries: OME-TIFF ``PhysicalSizeX/Y/Z``, ImageJ TIFF
(``spacing`` and the X/Y resolution tags), Imaris (``ExtMin``/``ExtMax`` over the image size),
HDF5 (``element_size_um``, the ImageJ/ilastik convention) and OME-Zarr (the ``scale`` of the
dataset in ``multiscales``). A file without any is *unknown*: size 1 in unit ``pixel``.
Units are named as NGFF names them (``micrometer``, ``nanometer``, ...).
"""
from __future__ import annotations

import json
import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

#: the unit of an unknown voxel size (its size is 1 on every axis).
PIXEL = "pixel"
#: the unit of a configured ``image.voxel_size`` and of Imaris' and HDF5's default.
MICROMETER = "micrometer"
#: spellings of units in TIFF, Imaris and OME metadata -> NGFF (UDUNITS-2) names.
_UNIT_NAMES = {
    "um": MICROMETER, "µm": MICROMETER, "\u03bcm": MICROMETER, "micron": MICROMETER,
    "microns": MICROMETER, "micrometer": MICROMETER, "micrometre": MICROMETER,
    "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter",
    "cm": "centimeter", "m": "meter", "meter": "meter", "pixel": PIXEL, "pixels": PIXEL,
}
#: OME's default unit of PhysicalSize*.
_OME_DEFAULT_UNIT = MICROMETER
ATTR_SIZE, ATTR_UNIT = "voxel_size", "voxel_unit"


class VoxelSize(NamedTuple):
    """Physical size of one voxel along z, y, x, and its unit."""
    size: tuple
    unit: str

    @property
    def known(self):
        return self.unit != PIXEL

    @property
    def volume(self):
        """Physical volume of one voxel."""
        return math.prod(self.size)


UNKNOWN = VoxelSize((1.0, 1.0, 1.0), PIXEL)


def _unit(name):
    """NGFF name of a unit spelling; unknown spellings are kept as they are."""
    name = str(name).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return _UNIT_NAMES.get(name.lower() if name.isascii() else name, name)


def _voxel_size(size, unit, source):
    """A VoxelSize, or UNKNOWN (logged) if a value is missing, not finite or not positive."""
    try:
        size = tuple(float(v) for v in size)
    except (TypeError, ValueError):
        size = ()
    unit = _unit(unit)
    if len(size) != 3 or not all(math.isfinite(v) and v > 0 for v in size) or unit == PIXEL:
        log.info("%s: no usable voxel size in the metadata (%s %s): unknown", source, size, unit)
        return UNKNOWN
    return VoxelSize(size, unit)


# ---------------------------------------------------------------------------------------------
# the formats


def _ome_tiff(tif, source):
    pixels = next((e for e in ElementTree.fromstring(tif.ome_metadata).iter()
                   if e.tag.rpartition("}")[2] == "Pixels"), None)
    attrib = pixels.attrib if pixels is not None else {}
    sizes = [attrib.get(f"PhysicalSize{axis}") for axis in "ZYX"]
    units = {attrib.get(f"PhysicalSize{axis}Unit", _OME_DEFAULT_UNIT) for axis in "ZYX"}
    if len({_unit(u) for u in units}) != 1:
        log.info("%s: PhysicalSize units differ per axis (%s): voxel size unknown", source, units)
        return UNKNOWN
    return _voxel_size(sizes, units.pop(), source)


def _resolution(page, tag):
    """Voxels per unit of a TIFF X/YResolution tag (a rational), or None."""
    value = page.tags.get(tag)
    if value is None:
        return None
    numerator, denominator = value.value
    return numerator / denominator if denominator else None


def _imagej_tiff(tif, source):
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    per_unit = [_resolution(page, "YResolution"), _resolution(page, "XResolution")]
    if None in per_unit or 0 in per_unit:
        return _voxel_size((), PIXEL, source)
    sizes = (meta.get("spacing", 1.0), 1 / per_unit[0], 1 / per_unit[1])
    return _voxel_size(sizes, meta.get("unit", PIXEL), source)


def _tiff(path, _dataset):
    import tifffile
    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_tiff(tif, path)
        if tif.is_imagej:
            return _imagej_tiff(tif, path)
    return UNKNOWN


def _imaris_text(attrs, name):
    """An Imaris attribute (stored as an array of one-byte strings) as text."""
    value = attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return b"".join(np.asarray(value).ravel().tolist()).decode(errors="replace")


def _imaris(path, _dataset):
    import h5py
    with h5py.File(path, "r") as f:
        info = f.get("DataSetInfo/Image")
        if info is None:
            return UNKNOWN
        attrs = info.attrs
        try:
            sizes = [(float(_imaris_text(attrs, f"ExtMax{i}")) -
                      float(_imaris_text(attrs, f"ExtMin{i}"))) / float(_imaris_text(attrs, a))
                     for i, a in ((2, "Z"), (1, "Y"), (0, "X"))]
        except (TypeError, ValueError, ZeroDivisionError):
            return _voxel_size((), PIXEL, path)
        return _voxel_size(sizes, _imaris_text(attrs, "Unit") or MICROMETER, path)


def _hdf5(path, dataset):
    import h5py
    with h5py.File(path, "r") as f:
        names = [dataset] if dataset else []
        f.visititems(lambda name, obj: names.append(name) if not dataset and isinstance(
            obj, h5py.Dataset) and obj.ndim >= 3 else None)
        for name in names[:1]:
            size = f[name].attrs.get("element_size_um") if name in f else None
            if size is not None and len(size) >= 3:
                return _voxel_size(tuple(size)[-3:], MICROMETER, path)
    return UNKNOWN


def _multiscales(attrs):
    """The ``multiscales`` list of OME-Zarr group attributes (NGFF 0.4, or 0.5 under 'ome')."""
    return attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales") or []


def _zarr(path, dataset):
    """The scale of the (named or first) dataset of an OME-Zarr's first multiscale image."""
    for group, name in _zarr_candidates(Path(path), dataset):
        for multiscale in _multiscales(_zarr_attrs(group)):
            axes = multiscale.get("axes", [])
            for entry in multiscale.get("datasets", []):
                if name is None or entry.get("path") == name:
                    return _scale_of(multiscale, entry, axes, path)
    return UNKNOWN


def _zarr_candidates(root, dataset):
    """(group folder, dataset name in it) pairs where an OME-Zarr image may describe it."""
    if not dataset:
        return [(root, None)]
    parts = dataset.strip("/").split("/")
    return [(root.joinpath(*parts[:-1]), parts[-1]), (root, dataset.strip("/"))]


def _zarr_attrs(group):
    """The attributes of a zarr v2 (``.zattrs``) or v3 (``zarr.json``) group folder."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            attrs = json.loads((group / name).read_text())
        except (OSError, ValueError):
            continue
        return attrs.get(key, {}) if key else attrs
    return {}


def _scale_of(multiscale, entry, axes, source):
    """z, y, x scale and unit of one ``datasets`` entry (dataset and multiscale transforms)."""
    scale = None
    transforms = list(entry.get("coordinateTransformations", []))
    transforms += multiscale.get("coordinateTransformations", [])
    for transform in transforms:
        if transform.get("type") == "scale":
            factor = np.asarray(transform.get("scale", []), float)
            scale = factor if scale is None else scale * factor
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    if scale is None or len(names) != len(scale) or not {"z", "y", "x"} <= set(names):
        return _voxel_size((), PIXEL, source)
    units = {a.get("unit", PIXEL) for a in axes if isinstance(a, dict) and a.get("name") in "zyx"}
    unit = units.pop() if len(units) == 1 else PIXEL
    return _voxel_size([scale[names.index(a)] for a in "zyx"], unit, source)


_READERS = {".tif": _tiff, ".tiff": _tiff, ".ims": _imaris, ".h5": _hdf5, ".hdf5": _hdf5,
            ".zarr": _zarr}


def read_voxel_size(path, dataset=None) -> VoxelSize:
    """The voxel size the image file's metadata gives, else :data:`UNKNOWN`.

    Metadata that cannot be parsed is logged and reported as unknown, never an error: the
    segmentation does not depend on it.
    """
    path = Path(path)
    suffix = ".zarr" if path.is_dir() else path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None or not path.exists():
        return UNKNOWN
    try:
        return reader(path, dataset)
    except (OSError, ValueError, KeyError, TypeError, ElementTree.ParseError) as e:
        log.warning("%s: voxel size metadata unreadable (%s): unknown", path, e)
        return UNKNOWN


def resolve_voxel_size(configured, path=None, dataset=None) -> VoxelSize:
    """``image.voxel_size`` (micrometers) if configured, else the file's, else unknown."""
    if configured is not None:
        return VoxelSize(tuple(float(v) for v in configured), MICROMETER)
    return UNKNOWN if path is None else read_voxel_size(path, dataset)


def voxel_size_attributes(attrs, path) -> dict:
    """``voxel_size`` and ``voxel_unit`` of a file's attributes; files without them: unknown."""
    if ATTR_SIZE not in attrs:
        return {ATTR_SIZE: UNKNOWN.size, ATTR_UNIT: UNKNOWN.unit}
    size, unit = attrs[ATTR_SIZE], attrs.get(ATTR_UNIT, PIXEL)
    unit = unit.decode() if isinstance(unit, bytes) else str(unit)
    size = tuple(float(v) for v in np.ravel(size))
    if len(size) != 3 or not all(math.isfinite(v) and v > 0 for v in size) or not re.match(
            r"^\w+$", unit):
        raise UserError(f"candidate file {path}: attribute '{ATTR_SIZE}': expected three "
                        f"numbers > 0 and a unit name, got {size} {unit!r}")
    return {ATTR_SIZE: size, ATTR_UNIT: unit}
