"""The ``intensities`` table: one row per object, per-channel columns; in label.h5 and as TSV.

Columns: ``label_id`` (uint32), ``voxel_count`` (int64), then for each measured channel ``c``
(its index in the image) ``mean_ch{c}``, ``std_ch{c}``, ``min_ch{c}``, ``max_ch{c}``,
``sum_ch{c}`` (float64). One row per object, so that the table joins the objects table (and
MoBIE's tables) on ``label_id``. Objects without voxels have NaN statistics and sum 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path

INTENSITIES = "intensities"
#: per-channel statistics, in column order.
STATISTICS = ("mean", "std", "min", "max", "sum")
#: rows formatted per write: bounds the text held in memory.
TSV_ROWS_PER_WRITE = 100_000
#: float format of the TSV: 17 significant digits read back as the same float64.
FLOAT_FORMAT = "%.17g"


def column_name(statistic, channel):
    """The column of ``statistic`` of image channel ``channel``, e.g. ``mean_ch0``."""
    return f"{statistic}_ch{channel}"


def intensity_table(voxel_count, columns):
    """The ``intensities`` table.

    Parameters
    ----------
    voxel_count : ndarray of int (K,)
        Voxels of each object, by id - 1.
    columns : mapping of int to mapping of str to ndarray (K,)
        Per channel index, the arrays of :data:`STATISTICS` (``IntensityMerge.columns``).

    Returns
    -------
    ndarray
        Structured array, one row per object by increasing ``label_id``.
    """
    names = [column_name(s, c) for c in columns for s in STATISTICS]
    dtype = np.dtype([("label_id", "u4"), ("voxel_count", "i8")] + [(n, "f8") for n in names])
    table = np.zeros(len(voxel_count), dtype)
    table["label_id"] = np.arange(1, len(table) + 1)
    table["voxel_count"] = voxel_count
    for channel, stats in columns.items():
        for statistic in STATISTICS:
            table[column_name(statistic, channel)] = stats[statistic]
    return table


def write_tsv(path, table):
    """Write a structured array as a tab-separated table with a header line, atomically.

    Integers are written as integers, floats with :data:`FLOAT_FORMAT` (``nan`` for NaN).
    """
    formats = "\t".join("%d" if table.dtype[n].kind in "iu" else FLOAT_FORMAT
                        for n in table.dtype.names)
    with atomic_path(Path(path)) as tmp_path, open(tmp_path, "w") as f:
        f.write("\t".join(table.dtype.names) + "\n")
        for start in range(0, len(table), TSV_ROWS_PER_WRITE):
            rows = table[start:start + TSV_ROWS_PER_WRITE]
            f.write("".join(formats % tuple(row) + "\n" for row in rows.tolist()))
