"""The one total order of candidates that every stage agrees on.

Candidates are ordered by decreasing probability, ties broken by point (z, y, x) ascending and
then by file row. The order never depends on tiling or on the order of rows in the file, so
every NMS tile and every label chunk ranks the candidates it sees consistently with the whole
volume.

StarDist's NMS and rendering sort by score with an unstable argsort on float32 values, so the
scores handed to them must be strictly decreasing along the order and exactly representable
in float32: local ranks ``n, n-1, ..., 1`` are, as long as ``n`` <= 2**24.
"""
from __future__ import annotations

import numpy as np

#: largest number of candidates whose ranks are all exact float32 integers.
MAX_RANKED = 2 ** 24


def total_order(prob, points, rows):
    """Indices that sort candidates into the total order.

    Parameters
    ----------
    prob : ndarray (N,)
        Object probabilities.
    points : ndarray (N, 3)
        Candidate centres (z, y, x).
    rows : ndarray (N,)
        Row of each candidate in the candidate file (the last tie breaker).

    Returns
    -------
    order : ndarray of int64 (N,)
        ``prob[order]`` is non-increasing; equal probabilities are ordered by point, then row.
    """
    points = np.asarray(points).reshape(-1, 3)
    return np.lexsort((rows, points[:, 2], points[:, 1], points[:, 0],
                       -np.asarray(prob, np.float64)))


def rank_scores(order):
    """Scores that are strictly decreasing along ``order`` and exact in float32.

    Parameters
    ----------
    order : ndarray of int (N,)
        A permutation, as returned by :func:`total_order`.

    Returns
    -------
    scores : ndarray of float32 (N,)
        ``scores[order]`` is ``N, N-1, ..., 1``.

    Raises
    ------
    ValueError
        If N exceeds :data:`MAX_RANKED`.
    """
    n = len(order)
    if n > MAX_RANKED:
        raise ValueError(f"{n} candidates cannot be ranked exactly in float32 "
                         f"(at most {MAX_RANKED})")
    scores = np.empty(n, np.float32)
    scores[order] = np.arange(n, 0, -1, dtype=np.float32)
    return scores
