#!/usr/bin/env python
"""Sweep of the fast NMS backend's equality with StarDist's NMS over rays, anisotropy, density
and threshold.

What it measures
----------------
For every combination of ray count (``--rays``), ray anisotropy (``--anisotropies``), nucleus
count (``--nuclei``, in a ``--shape`` volume) and NMS threshold (``--thresholds``), one
synthetic candidate set of each kind:

* *small*: ``synthetic.synthetic_candidates`` (20-30 jittered candidates per nucleus, radii 4-7
  voxels, z half that: polyhedra of ~100-250 voxels, as benchmarks/hpc_step.py writes them; its
  own rays are always of anisotropy (2, 1, 1), so the anisotropy axis does not vary it);
* *dense*: ``synthetic.dense_candidates`` (40 candidates per nucleus over its interior).

Both backends get the candidates in the total order (``order.total_order``): the fast one
(``nms_fast.non_maximum_suppression``) in that order, StarDist's
``non_maximum_suppression_3d_inds`` the rank scores ``N..1``, with one OpenMP thread. Printed
per set: candidates, kept by each, the candidates whose fate differs (target 0) and how many
pairs the fast backend handed to StarDist's own checks; the last line counts the sets that
differ.

How to run
----------
::

    .venv/bin/python benchmarks/nms_sweep.py
    .venv/bin/python benchmarks/nms_sweep.py --rays 32 96 --thresholds 0.3

The defaults take about five minutes on one busy core, almost all of it in StarDist's NMS.
"""
from __future__ import annotations

import os

# One thread, before numpy, numba or StarDist's OpenMP runtime start their thread pools.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from stardist_hpc.geometry.order import rank_scores, total_order  # noqa: E402
from stardist_hpc.geometry.rays import ray_geometry  # noqa: E402
from stardist_hpc.segment.nms_fast import suppress_counting_pairs  # noqa: E402
from stardist_hpc.synthetic import (  # noqa: E402
    dense_candidates,
    random_centres,
    synthetic_candidates,
)

DEFAULT_RAYS = (32, 48, 64, 96, 128)
DEFAULT_ANISOTROPIES = ("1,1,1", "2,1,1", "4,1,1")
DEFAULT_NUCLEI = (10, 30)
DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5)
DEFAULT_SHAPE = (24, 96, 96)
#: candidates per nucleus of the two kinds (inclusive range; fixed count).
SMALL_CANDIDATES = (20, 30)
DENSE_CANDIDATES = 40
SEED = 0


def candidate_set(kind, shape, nuclei, n_rays, anisotropy, seed):
    """Rays, prob, dist and points of one synthetic set."""
    centres = random_centres(shape, nuclei, seed)
    if kind == "small":
        return synthetic_candidates(shape, centres, n_rays=n_rays,
                                    candidates_per_nucleus=SMALL_CANDIDATES, seed=seed)
    return dense_candidates(shape, centres, n_rays=n_rays, anisotropy=anisotropy,
                            candidates_per_nucleus=DENSE_CANDIDATES, seed=seed)


def compare(rays, prob, dist, points, thresh):
    """Kept flags of StarDist's NMS and of the fast one (in the total order), and the fast
    backend's pair counts."""
    from stardist.nms import non_maximum_suppression_3d_inds
    order = total_order(prob, points, np.arange(len(prob)))
    dist, points = dist[order], points[order]
    stardist = non_maximum_suppression_3d_inds(dist, points, rays,
                                               rank_scores(np.arange(len(prob))), thresh,
                                               verbose=False)
    fast, counts = suppress_counting_pairs(dist, points, ray_geometry(json.dumps(rays.to_json())),
                                           thresh)
    return stardist, fast, counts


def parse_args(argv):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rays", type=int, nargs="+", default=DEFAULT_RAYS)
    parser.add_argument("--anisotropies", nargs="+", default=DEFAULT_ANISOTROPIES,
                        help="ray anisotropies z,y,x")
    parser.add_argument("--nuclei", type=int, nargs="+", default=DEFAULT_NUCLEI)
    parser.add_argument("--thresholds", type=float, nargs="+", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE,
                        metavar=("Z", "Y", "X"))
    return parser.parse_args(argv)


def main(argv=None):
    """Run the sweep and print one line per candidate set."""
    args = parse_args(argv)
    anisotropies = [tuple(float(v) for v in a.split(",")) for a in args.anisotropies]
    started, differing, sets = time.perf_counter(), 0, 0
    print(f"{'kind':6}{'rays':>5} {'anisotropy':>15}{'nuclei':>7}{'thresh':>7}{'N':>7}"
          f"{'kept sd':>8}{'kept fast':>10}{'differ':>7}{'borderline':>11}")
    for kind, n_rays, anisotropy, nuclei, thresh in itertools.product(
            ("small", "dense"), args.rays, anisotropies, args.nuclei, args.thresholds):
        if kind == "small" and anisotropy != anisotropies[0]:
            continue   # its rays do not take an anisotropy
        rays, prob, dist, points = candidate_set(kind, tuple(args.shape), nuclei, n_rays,
                                                 anisotropy, SEED + n_rays + nuclei)
        stardist, fast, counts = compare(rays, prob, dist, points, thresh)
        differ = int(np.sum(stardist != fast))
        differing += differ > 0
        sets += 1
        shown = "-" if kind == "small" else ",".join(f"{a:g}" for a in anisotropy)
        print(f"{kind:6}{n_rays:>5} {shown:>15}{nuclei:>7}{thresh:>7.2f}{len(prob):>7}"
              f"{stardist.sum():>8}{fast.sum():>10}{differ:>7}{counts.by_qhull:>11}",
              flush=True)
    print(f"{differing} of {sets} sets differ; {time.perf_counter() - started:.0f} s")
    return 0 if differing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
