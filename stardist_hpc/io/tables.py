"""The objects table as files people open: TSV (MoBIE, pandas, spreadsheets) and Parquet.

Columns, in order: MoBIE's default columns in physical units (``label_id``, ``anchor_x/y/z``:
the centroid, ``bb_min_x/y/z`` and ``bb_max_x/y/z``: the faces of the voxel bounding box),
``volume`` (voxel count times the voxel volume), then every field of the ``objects`` table of
label.h5 but ``id`` (whatever fields it has: ``prob``, the voxel centroid and box, the voxel
count, and e.g. class columns), a field of several values per object as ``name_0``,
``name_1``, ... Only objects that rendered at least one voxel are rows (the others are not in
the label image). Physical units are the voxel size's unit (``pixel`` if unknown).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import atomic_path
from .voxel_size import VoxelSize

#: rows formatted at once while writing a TSV: bounds the text held in memory (each value is
#: a Python string of ~60 bytes while its block is joined: ~7 MiB for 2,000 rows).
ROWS_PER_BLOCK = 2000
#: fields of the objects table that MoBIE's columns are made from.
_ID, _COUNT = "id", "voxel_count"


def _physical(objects, voxel_size: VoxelSize):
    """MoBIE's columns and the physical volume, by name."""
    columns = {"label_id": objects[_ID]}
    size = dict(zip("zyx", voxel_size.size))
    for axis in "xyz":
        columns[f"anchor_{axis}"] = objects[f"centroid_{axis}"] * size[axis]
    for axis in "xyz":
        columns[f"bb_min_{axis}"] = objects[f"{axis}0"] * size[axis]
    for axis in "xyz":
        columns[f"bb_max_{axis}"] = objects[f"{axis}1"] * size[axis]
    columns["volume"] = objects[_COUNT] * voxel_size.volume
    return columns


def table_columns(objects, voxel_size: VoxelSize) -> dict:
    """The columns of the tables (name -> 1-D array), rendered objects only.

    Parameters
    ----------
    objects : structured ndarray
        The ``objects`` table of label.h5 (any extra fields are carried along).
    voxel_size : VoxelSize
    """
    objects = objects[objects[_COUNT] > 0]
    columns = _physical(objects, voxel_size)
    for name in objects.dtype.names:
        if name == _ID:
            continue
        values = objects[name]
        if values.ndim == 1:
            columns[name] = values
            continue
        values = values.reshape(len(values), math.prod(values.shape[1:]))
        columns.update({f"{name}_{i}": values[:, i] for i in range(values.shape[1])})
    return columns


def _text(values):
    """Each value as text: integers exactly, floats in their shortest round-trip form."""
    return np.asarray(values).astype(str)


def write_tsv(path, columns):
    """Write ``columns`` (name -> 1-D array) as a tab-separated file; appears when complete."""
    names = list(columns)
    n_rows = len(columns[names[0]]) if names else 0
    with atomic_path(Path(path)) as tmp_path, open(tmp_path, "w", encoding="utf-8") as f:
        f.write("\t".join(names) + "\n")
        for start in range(0, n_rows, ROWS_PER_BLOCK):
            # one column's text at a time as Python strings, joined row by row: numpy's own
            # string concatenation held every column's padded text several times over
            texts = [_text(columns[name][start:start + ROWS_PER_BLOCK]).tolist()
                     for name in names]
            f.write("\n".join(map("\t".join, zip(*texts))) + "\n")


def parquet_available():
    """Whether pyarrow, which writes Parquet, is installed."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def check_parquet(path):
    """Refuse a configured Parquet file when pyarrow is not installed (before any work)."""
    if path is not None and not parquet_available():
        raise UserError(f"config key 'output.objects_parquet': writing {path} needs pyarrow "
                        "(pip install pyarrow), or set it to null")


def write_parquet(path, columns):
    """Write ``columns`` as a Parquet file (needs pyarrow); appears when complete."""
    import pyarrow
    import pyarrow.parquet
    table = pyarrow.table({name: np.asarray(values) for name, values in columns.items()})
    with atomic_path(Path(path)) as tmp_path:
        pyarrow.parquet.write_table(table, tmp_path)
