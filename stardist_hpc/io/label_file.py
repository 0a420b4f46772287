"""``label.h5``: the uint32 label volume of the whole image, assembled from rendered chunks.

Layout (format version 1)::

    labels   uint32 image_shape, chunks = output.chunk_shape, gzip     0 = background
    data     soft link to /labels (the name the original pipeline used)
    objects  compound (K,)  per object, by id: id, prob, centroid_z/y/x, bbox z0, y0, x0,
                            z1, y1, x1 (half-open, of the rendered voxels), voxel_count;
                            for a multi-class model also class_id and prob_class_0 ..
                            prob_class_C (see ``object_dtype``)
    intensities compound (K,) with ``measure``: per object and channel (io/intensities.py)
    attrs    format_version, image_shape, rays_json, prob_thresh, nms_thresh, source,
             n_objects, voxel_size (z, y, x), voxel_unit

Storage chunks arrive already deflate-compressed and are written as they are
(``write_direct_chunk``), so the driver never holds more than one task chunk's bytes. Objects
that rendered no voxel (covered by more probable ones) have voxel_count 0, NaN centroids and an
empty bbox.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from ..progress import progress
from .atomic import atomic_path
from .chunks import ChunkStats, chunk_files, split_stored
from .hdf5 import open_hdf5, writing_hdf5

FORMAT_VERSION = 1
LABELS = "labels"
#: name of the label dataset in the original pipeline's label file.
ORIGINAL_LABELS = "data"
OBJECTS = "objects"

OBJECT_DTYPE = np.dtype([
    ("id", "u4"), ("prob", "f4"),
    ("centroid_z", "f8"), ("centroid_y", "f8"), ("centroid_x", "f8"),
    ("z0", "i8"), ("y0", "i8"), ("x0", "i8"), ("z1", "i8"), ("y1", "i8"), ("x1", "i8"),
    ("voxel_count", "i8"),
])


#: per-object fields of a multi-class model: StarDist's ``class_id`` (the argmax of the class
#: probabilities, 0 = background) and one column per class probability (flat, so that
#: ``pandas.DataFrame(table)`` works), prefixed as below.
CLASS_ID = "class_id"
PROB_CLASS_PREFIX = "prob_class_"


def object_dtype(n_classes=0):
    """The ``objects`` table's dtype; with ``n_classes`` > 0 also ``class_id`` and
    ``prob_class_0`` (background) .. ``prob_class_{n_classes}``."""
    if not n_classes:
        return OBJECT_DTYPE
    return np.dtype(OBJECT_DTYPE.descr + [(CLASS_ID, "i4")]
                    + [(f"{PROB_CLASS_PREFIX}{k}", "f4") for k in range(n_classes + 1)])


class ObjectStatistics:
    """Per-object statistics summed over chunks (arrays of size K, indexed by id - 1)."""

    def __init__(self, n_objects):
        self.voxel_count = np.zeros(n_objects, np.int64)
        self.coord_sum = np.zeros((n_objects, 3), np.int64)
        self.bbox_lo = np.full((n_objects, 3), np.iinfo(np.int64).max)
        self.bbox_hi = np.full((n_objects, 3), np.iinfo(np.int64).min)

    def add(self, stats: ChunkStats):
        """Add the statistics of one chunk."""
        at = stats.ids.astype(np.int64) - 1
        self.voxel_count[at] += stats.voxel_count
        self.coord_sum[at] += stats.coord_sum
        self.bbox_lo[at] = np.minimum(self.bbox_lo[at], stats.bbox_lo)
        self.bbox_hi[at] = np.maximum(self.bbox_hi[at], stats.bbox_hi)

    def table(self, prob, prob_class=None):
        """The ``objects`` table, given the probability (and a multi-class model's class
        probabilities, (K, n_classes + 1)) of each object by id - 1."""
        n_classes = 0 if prob_class is None else prob_class.shape[1] - 1
        table = np.zeros(len(self.voxel_count), object_dtype(n_classes))
        table["id"] = np.arange(1, len(table) + 1)
        table["prob"] = prob
        if n_classes:   # as StarDist's predict_instances: np.argmax(prob_class, axis=-1)
            table[CLASS_ID] = np.argmax(prob_class, axis=-1)
            for k in range(n_classes + 1):
                table[f"{PROB_CLASS_PREFIX}{k}"] = prob_class[:, k]
        table["voxel_count"] = self.voxel_count
        rendered = self.voxel_count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            centroid = self.coord_sum / self.voxel_count[:, None]
        for axis, name in enumerate("zyx"):
            table[f"centroid_{name}"] = np.where(rendered, centroid[:, axis], np.nan)
            table[f"{name}0"] = np.where(rendered, self.bbox_lo[:, axis], 0)
            table[f"{name}1"] = np.where(rendered, self.bbox_hi[:, axis], 0)
        return table


def _write_chunks(f, dset, chunk_dir, stored_chunks, show_progress):
    """Copy the compressed storage chunks into ``dset`` of the file ``f`` (a
    :class:`~.hdf5.GuardedFile`)."""
    for index, stored in progress(stored_chunks.items(), len(stored_chunks), "write label.h5",
                                  "chunk", show_progress=show_progress):
        if not len(stored.storage_size):
            continue   # no objects: no labels file
        data = chunk_files(chunk_dir, index).labels.read_bytes()
        for lo, piece in split_stored(data, stored):
            dset.id.write_direct_chunk(lo, piece)
        f.raise_failed_write()   # a full disk stops the copy at once


def write_label_file(path, image_shape, storage_shape, chunk_dir, stored_chunks, objects,
                     attributes, *, show_progress=True, tables=None):
    """Assemble ``label.h5`` from checkpointed chunks; it appears at ``path`` when complete.

    Parameters
    ----------
    path : Path
    image_shape, storage_shape : tuple of 3 int
        The volume's shape and its HDF5 chunk shape (``output.chunk_shape``, clipped).
    chunk_dir : Path
        Where :func:`stardist_hpc.segment.render.render_chunk` wrote the chunks.
    stored_chunks : mapping of int to StoredChunks
        The rendered chunks (by chunk index) and the storage chunks in each one's labels file
        (none for a chunk without objects); all other voxels are background.
    objects : ndarray
        The ``objects`` table (:meth:`ObjectStatistics.table` of the chunks' statistics).
    attributes : mapping of str to object
        Provenance written as file attributes: image_shape, rays_json, thresholds, source,
        software version, backends and the resolved parameters (see doc/file_formats.md).
    show_progress : bool
        Report progress (a bar on a terminal, else a log line now and then).
    tables : mapping of str to ndarray, optional
        More per-object tables to store, by dataset name (e.g. ``intensities``).
    """
    with atomic_path(Path(path)) as tmp_path, writing_hdf5(tmp_path) as f:
        dset = f.create_dataset(LABELS, image_shape, np.uint32, chunks=storage_shape,
                                compression="gzip", fillvalue=0)
        _write_chunks(f, dset, chunk_dir, stored_chunks, show_progress)
        f[ORIGINAL_LABELS] = h5py.SoftLink(f"/{LABELS}")
        f.create_dataset(OBJECTS, data=objects)
        for name, extra in (tables or {}).items():
            f.create_dataset(name, data=extra)
        f.attrs.update(attributes)
        f.attrs.update(format_version=FORMAT_VERSION, n_objects=len(objects))


def read_objects(path) -> np.ndarray:
    """The ``objects`` table of a label file: one row per object, by increasing id.

    Parameters
    ----------
    path : str or Path
        A ``label.h5`` written by :func:`~stardist_hpc.segment_candidates`.

    Returns
    -------
    ndarray
        Structured array with the fields ``id``, ``prob``, ``centroid_z/y/x``, the voxel box
        ``z0, y0, x0`` (first) and ``z1, y1, x1`` (past the last), and ``voxel_count``; for
        a multi-class model also ``class_id`` and ``prob_class_0`` .. ``prob_class_C``
        (``pandas.DataFrame(table)`` makes it a data frame).

    Raises
    ------
    UserError
        If the file is missing, unreadable or has no ``objects`` table.
    """
    with open_hdf5(path, "label file", "expected a label.h5 of hpc_prediction.py") as f:
        if OBJECTS not in f:
            raise UserError(f"label file {path}: no '{OBJECTS}' table (expected a label.h5 "
                            "written by hpc_prediction.py)")
        return f[OBJECTS][()]
