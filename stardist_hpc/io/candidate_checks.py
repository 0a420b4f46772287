"""Checks of a candidate file, so that a damaged or inconsistent file never becomes labels.

Two levels, each failing with a one-line :class:`UserError` naming the file, the dataset or
attribute, and the first bad row:

- :func:`check_header` when the file is opened (cheap: attributes, dataset shapes and dtypes,
  the blocks table's row ranges partition ``0..N`` and its cores do not overlap);
- :func:`check_block_rows` on the rows a task reads (finite values, ``prob`` in [0, 1],
  ``dist`` > 0, points inside their block's core, hence inside the image), and
  :func:`check_class_rows` on the class probabilities a task reads (finite, in [0, 1]).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from ..errors import UserError

#: the format this package reads and writes.
FORMAT_VERSION = 1
#: attribute of a GPU-step temporary that is not complete yet (what its blocks came from).
RESUME_KEY = "resume_key"
#: attribute holding the SHA-256 of every other attribute (a damaged header is an error).
HEADER_CHECKSUM = "header_sha256"
AXES = "zyx"
#: the class probabilities of a multi-class model's candidates (background first).
PROB_CLASS = "prob_class"


#: what StarDist's ``rays_from_json`` (an ``eval`` of the class name) raises on a bad one.
RAYS_ERRORS = (TypeError, ValueError, KeyError, AttributeError, NameError, SyntaxError)


def _plain(value):
    """A file's value as Python prints it (numpy scalars and arrays as numbers and lists)."""
    return value.tolist() if hasattr(value, "tolist") else value


def _fail(path, where, message):
    raise UserError(f"candidate file {path}: {where}: {message}")


def _number_in(attrs, name, path, lo, hi):
    value = attrs[name]
    if isinstance(value, (bytes, str)) or not np.isscalar(value) or not lo <= value <= hi:
        _fail(path, f"attribute '{name}'", f"expected a number in [{lo}, {hi}], got "
                                           f"{_plain(value)!r}")
    return float(value)


def _positive_triple(attrs, name, path):
    value = np.asarray(attrs[name])
    if value.shape != (3,) or value.dtype.kind not in "iu" or np.any(value < 1):
        _fail(path, f"attribute '{name}'", f"expected 3 positive integers (z, y, x), got "
                                           f"{_plain(attrs[name])!r}")
    return tuple(int(v) for v in value)


def _n_rays(rays_json, path):
    """Number of rays of the file's rays description (checked to be StarDist's JSON)."""
    from stardist.rays3d import rays_from_json
    try:
        return len(rays_from_json(json.loads(rays_json)).vertices)
    except RAYS_ERRORS as e:
        _fail(path, "attribute 'rays_json'", f"expected StarDist's rays description (JSON), "
                                             f"got {str(rays_json)[:60]!r} ({e})")


def header_checksum(attrs):
    """SHA-256 of a file's attributes (but the checksum and the resume key), as text."""
    values = {name: _plain(attrs[name]) for name in sorted(attrs)
              if name not in (HEADER_CHECKSUM, RESUME_KEY)}
    text = json.dumps({k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_header_checksum(attrs, path):
    """The attributes' SHA-256 equals the stored one (files before the checksum: skipped)."""
    stored = attrs.get(HEADER_CHECKSUM)
    if stored is None:   # files of versions before the checksum: nothing to compare
        return
    stored = stored.decode() if isinstance(stored, bytes) else stored
    if stored != header_checksum(attrs):
        _fail(path, f"attribute '{HEADER_CHECKSUM}'", "expected the checksum of the file's "
                                                      "attributes, got another: an attribute "
                                                      "was changed or damaged; rerun the GPU "
                                                      "step")


def check_attributes(attrs, path):
    """The validated header values: image_shape, grid, thresholds, number of rays."""
    if RESUME_KEY in attrs:
        _fail(path, "attribute 'resume_key'", "the file is an unfinished GPU-step temporary; "
                                              "expected a complete prediction.h5 (rerun "
                                              "local_prediction.py to finish it)")
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        _fail(path, "attribute 'format_version'", f"expected {FORMAT_VERSION}, got "
                                                  f"{_plain(version)!r}")
    checked = {"image_shape": _positive_triple(attrs, "image_shape", path),
               "grid": _positive_triple(attrs, "grid", path),
               "prob_thresh": _number_in(attrs, "prob_thresh", path, 0, 1),
               "nms_thresh": _number_in(attrs, "nms_thresh", path, 0, 1),
               "n_rays": _n_rays(attrs["rays_json"], path),
               "n_classes": _n_classes(attrs, path)}
    return checked


def _n_classes(attrs, path):
    """The file's object classes: 0 (single class) when the attribute is absent."""
    value = attrs.get("n_classes", 0)
    if isinstance(value, (bytes, str)) or not np.isscalar(value) or isinstance(value, bool) \
            or not float(value).is_integer() or value < 0:
        _fail(path, "attribute 'n_classes'", f"expected an integer >= 0, got {_plain(value)!r}")
    return int(value)


def check_datasets(f, path, n_rays, n_classes=0):
    """Shapes and dtypes of prob, dist, points (and prob_class of a multi-class model's
    file); returns the number of candidates N."""
    n = f["prob"].shape[0] if f["prob"].ndim == 1 else -1
    expected = {"prob": ((n,), "f"), "dist": ((n, n_rays), "f"), "points": ((n, 3), "iu")}
    if n_classes:
        if PROB_CLASS not in f:
            _fail(path, f"dataset '{PROB_CLASS}'", f"expected the class probabilities of "
                                                   f"{n_classes} classes (attribute "
                                                   "n_classes), got none")
        expected[PROB_CLASS] = ((n, n_classes + 1), "f")
    for name, (shape, kinds) in expected.items():
        dset = f[name]
        if dset.shape != shape or dset.dtype.kind not in kinds:
            _fail(path, f"dataset '{name}'", f"expected shape {shape} of "
                                             f"{'floats' if kinds == 'f' else 'integers'}, got "
                                             f"{dset.shape} of {dset.dtype}")
    return n


def check_blocks(blocks, path, n_rows, image_shape):
    """The blocks table's row ranges partition 0..N and its cores do not overlap."""
    where = "dataset 'blocks'"
    if blocks.dtype.names is None or not {"row_start", "row_stop"} <= set(blocks.dtype.names):
        _fail(path, where, f"expected the block index table, got dtype {blocks.dtype}")
    starts, stops = blocks["row_start"], blocks["row_stop"]
    expected_starts = np.concatenate([[0], stops[:-1]])
    bad = np.flatnonzero((starts != expected_starts) | (stops < starts))
    if len(bad):
        _fail(path, where, f"expected row ranges that partition rows 0..{n_rows} in order, got "
                           f"[{starts[bad[0]]}, {stops[bad[0]]}) at block {bad[0]}")
    if (stops[-1] if len(stops) else 0) != n_rows:
        _fail(path, where, f"expected row ranges that end at row {n_rows}, got "
                           f"{stops[-1] if len(stops) else 0}")
    _check_cores_apart(blocks, path, image_shape)


def _check_cores_apart(blocks, path, image_shape):
    """Block cores lie inside the image and do not overlap (counted on the cores' grid).

    They need not cover the image: an indexed original-format file has blocks only where
    there are candidates. With the row checks of :func:`check_block_rows` (every point in its
    block's core) this makes every candidate found exactly once by a spatial query.
    """
    lo = np.stack([blocks[f"{a}0"] for a in AXES], axis=1)
    hi = np.stack([blocks[f"{a}1"] for a in AXES], axis=1)
    outside = np.flatnonzero(np.any((lo < 0) | (hi > image_shape) | (hi <= lo), axis=1))
    if len(outside):
        i = outside[0]
        _fail(path, "dataset 'blocks'", f"expected block cores inside the image "
                                        f"{tuple(image_shape)}, got [{tuple(lo[i])}, "
                                        f"{tuple(hi[i])}) at block {i}")
    edges = [np.unique(np.concatenate([[0, s], lo[:, a], hi[:, a]]))
             for a, s in enumerate(image_shape)]
    cover = np.zeros([len(e) - 1 for e in edges], np.int64)
    first = [np.searchsorted(e, lo[:, a]) for a, e in enumerate(edges)]
    last = [np.searchsorted(e, hi[:, a]) for a, e in enumerate(edges)]
    for i in range(len(blocks)):
        cover[first[0][i]:last[0][i], first[1][i]:last[1][i], first[2][i]:last[2][i]] += 1
    if np.any(cover > 1):
        first_overlap = np.argwhere(cover > 1)[0]
        cell = tuple(int(edges[a][c]) for a, c in enumerate(first_overlap))
        _fail(path, "dataset 'blocks'", f"expected block cores that do not overlap, got "
                                        f"{int(cover[tuple(first_overlap)])} cores at voxel "
                                        f"{cell}")


def first_invalid_value(prob, dist):
    """``(dataset, index, expected, value)`` of the first bad prob or dist row, or None.

    Probabilities must be finite and in [0, 1], ray lengths finite and > 0 (StarDist clamps
    them to at least 1e-3).
    """
    checks = (("prob", ~(np.isfinite(prob) & (prob >= 0) & (prob <= 1)),
               "expected finite probabilities in [0, 1]"),
              ("dist", ~np.all(np.isfinite(dist) & (dist > 0), axis=1),
               "expected finite ray lengths > 0"))
    for name, bad, expected in checks:
        rows = np.flatnonzero(bad)
        if len(rows):
            value = prob[rows[0]] if name == "prob" else dist[rows[0]]
            if name == "dist":   # the first bad ray length, not all of them
                value = value[~(np.isfinite(value) & (value > 0))][0]
            return name, int(rows[0]), expected, np.asarray(value).tolist()
    return None


def check_class_rows(path, start, prob_class):
    """Class probabilities read from row ``start`` on: finite and in [0, 1]."""
    bad = np.flatnonzero(~np.all(np.isfinite(prob_class) & (prob_class >= 0)
                                 & (prob_class <= 1), axis=1))
    if len(bad):
        _fail(path, f"dataset '{PROB_CLASS}'", f"expected finite probabilities in [0, 1], got "
                                               f"{prob_class[bad[0]].tolist()} at row "
                                               f"{start + bad[0]}")


def check_block_rows(path, block, prob, dist, points, start=None):
    """Rows of one block (all of them, or those from row ``start`` on): finite, prob in
    [0, 1], dist > 0, points inside the core."""
    start = int(block["row_start"]) if start is None else int(start)
    invalid = first_invalid_value(prob, dist)
    if invalid is not None:
        name, index, expected, value = invalid
        _fail(path, f"dataset '{name}'", f"{expected}, got {value} at row {start + index}")
    lo = np.array([block[f"{a}0"] for a in AXES])
    hi = np.array([block[f"{a}1"] for a in AXES])
    outside = np.flatnonzero(~np.all((points >= lo) & (points < hi), axis=1))
    if len(outside):
        _fail(path, "dataset 'points'", f"expected points inside their block's core "
                                        f"[{tuple(lo.tolist())}, {tuple(hi.tolist())}), got "
                                        f"{points[outside[0]].tolist()} at row "
                                        f"{start + outside[0]}")
