#!/usr/bin/env python
"""Benchmark of the fast NMS backend against StarDist's NMS, measured side by side in one run.

What it measures
----------------
Everything runs in this one process with one thread per backend: ``OMP_NUM_THREADS=1``
(StarDist's C code uses OpenMP) and ``NUMBA_NUM_THREADS=1`` are set before anything is imported,
and the header prints the thread counts both runtimes report. The Dask worker of step 3
inherits them.

1. NMS on synthetic candidate sets of two kinds. *tissue*: ``synthetic.dense_candidates``
   (110 candidates per nucleus spread over its interior, as a trained network's) of sparse,
   medium and crowded nuclei (``synthetic.separated_centres``: neighbours press against each
   other but do not interpenetrate), 64 and 96 rays, ray anisotropy (2, 1, 1) and (4, 1, 1).
   *noisy* (issue #15): ``synthetic.noisy_candidates`` (bumpy polyhedra with +-5% noise on
   every ray, rotated nuclei varying +-30% per axis, all network grid points of their inner
   part, prob ties at 1.0) at ``synthetic.random_centres``, so that nuclei interpenetrate;
   sparse, medium and crowded, 64 and 96 rays. Candidates are put in the total order
   (``order.total_order``) once; the fast backend (``nms_fast.non_maximum_suppression``) gets
   them in that order, StarDist's
   ``non_maximum_suppression_3d_inds`` the rank scores ``N..1``. Numba is warmed up by a tiny
   call first, so compilation stays out of the timing. StarDist's NMS runs once per set (it
   dominates the runtime); the fast one runs ``--repeat`` times and its median counts (its
   first run includes building the set's cone table, which the HPC step builds once per
   worker and ray set). Per set: candidates, kept by each, seconds of each and their ratio
   (target >= 50 on every set), the agreement ``|kept_fast & kept_stardist| /
   |kept_fast | kept_stardist|`` (target 1 on every set) and the matching F1 at IoU 0.5
   between the two kept sets, each rendered by StarDist's ``polyhedron_to_label`` (target
   >= 0.999 on every set); and how the fast backend decided its pairs
   (``nms_fast.suppress_counting_pairs``): pairs tested, decided by boxes, by bounds, by
   counting, by Qhull, and inside tests per counted pair.
2. The labeling question: the fast backend's kept set of each candidate set rendered into a
   label volume by ``render.render_labels`` with its two renderers (first, most probable,
   object wins a voxel in both): ``'fast'``, the O(1) cone-table inside test of
   ``stardist_hpc.geometry.cone_table`` that the fast NMS counts with, and ``'stardist'``, the exact
   port of StarDist's renderer. Printed: labelled voxels, voxels whose label differs, and the
   speed ratio (median of ``--repeat`` runs each; information, no target).
3. The whole HPC step (``stardist_hpc.segment.step.run``, cluster.mode local, 1 worker, 1 thread,
   ``nms.backend: fast``; ``labeling.backend`` is the config's default unless
   ``--labeling-backend`` sets it) on an NMS-heavy candidate file of noisy nuclei (64x512x512,
   900 nuclei, 96 rays, as in issue #15), against StarDist's ``non_maximum_suppression_3d_inds``
   + ``polyhedron_to_label`` on the same candidates in this process. Printed: the wall time of
   ``hpc.run`` (cluster start and stop included) and the sum of its stages, the seconds of
   StarDist's two calls, their ratio (target >= 25), the matching F1 at IoU 0.5 between the
   two label volumes (target >= 0.999), the agreement of the kept candidates and the label
   voxels that differ.

The backends can disagree on a pair whose overlap lies within a few voxels of the threshold:
StarDist decides most pairs by continuous bounds (inner spheres, Qhull intersections of kernels
and hulls) and counts voxels only when those do not decide; the fast backend counts voxels and
hands only the pairs whose count lies within ``nms_fast.BORDERLINE`` of the limit to
StarDist's Qhull checks. The report ends with a table of the targets (PASS/MISS). ``cpu``
figures are this process's CPU seconds: far less than the wall time means other processes held
the cores.

How to run
----------
::

    .venv/bin/python benchmarks/nms_speed.py
    .venv/bin/python benchmarks/nms_speed.py --scale 2 --repeat 5

``--scale`` multiplies the x extent and the nuclei of every candidate set and of the HPC volume
(same densities, ``scale`` times the candidates). The defaults take about 25 minutes on two
busy cores, almost all of it in StarDist's NMS (about 10 minutes on the HPC step's file). The
report goes to stdout, progress to stderr; the HPC step's files go to ``--workdir`` (default:
a temporary directory, deleted at the end).
"""
from __future__ import annotations

import os

# One thread each, before numpy, numba or StarDist's OpenMP runtime start their thread pools.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["NUMBA_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from measure import verdict  # noqa: E402

from stardist_hpc.config import LABELING_BACKEND_FAST, LABELING_BACKEND_STARDIST  # noqa: E402
from stardist_hpc.geometry.order import rank_scores, total_order  # noqa: E402
from stardist_hpc.geometry.rays import RayGeometry  # noqa: E402
from stardist_hpc.geometry.tiling import Box  # noqa: E402
from stardist_hpc.segment.render import render_labels  # noqa: E402
from stardist_hpc.synthetic import (  # noqa: E402
    DEFAULT_RADIUS_RANGE,
    dense_candidates,
    noisy_candidates,
    random_centres,
    separated_centres,
    write_candidate_file,
)

log = logging.getLogger("benchmarks.nms_speed")


class CandidateSet(NamedTuple):
    """One synthetic candidate set: its nuclei in the fixed volume and its rays."""
    density: str
    nuclei: int
    n_rays: int
    anisotropy: tuple
    kind: str = "tissue"   # TISSUE or NOISY


#: nuclei that press against each other (``synthetic.dense_candidates`` at
#: ``synthetic.separated_centres``), or bumpy, rotated nuclei that interpenetrate
#: (``synthetic.noisy_candidates`` at ``synthetic.random_centres``).
TISSUE, NOISY = "tissue", "noisy"


#: volume (z, y, x) every candidate set lives in (``--scale`` multiplies x).
SET_SHAPE = (24, 80, 80)
#: nuclei of the three densities in SET_SHAPE (fewer where they do not fit): about 9%, 19% and
#: up to 33% of the volume inside a nucleus at anisotropy (2, 1, 1) (half that at (4, 1, 1)).
SPARSE, MEDIUM, CROWDED = 20, 40, 70
#: nucleus centres are at least this far apart (physical voxels): the sum of the smallest and
#: the largest radius, so neighbours press against each other but do not interpenetrate, as in
#: tissue. (Random, interpenetrating centres make many more pairs borderline, which the fast
#: backend hands to Qhull as StarDist does: its ratio then falls to about 50.)
MIN_CENTRE_DISTANCE = sum(DEFAULT_RADIUS_RANGE)
#: the sets of step 1, about 34,000 candidates in all (StarDist's NMS does ~450/s on one core).
CANDIDATE_SETS = (
    CandidateSet("sparse", SPARSE, 64, (2, 1, 1)),
    CandidateSet("medium", MEDIUM, 64, (2, 1, 1)),
    CandidateSet("crowded", CROWDED, 64, (2, 1, 1)),
    CandidateSet("crowded", CROWDED, 96, (2, 1, 1)),
    CandidateSet("medium", MEDIUM, 96, (4, 1, 1)),
    CandidateSet("crowded", CROWDED, 96, (4, 1, 1)),
)
#: the noisy sets live in a larger volume (``--scale`` multiplies x): their nuclei are as
#: large, and a set of SET_SHAPE would hold a handful. Their nuclei fill about 4%, 8% and 17%
#: of it, overlapping where they meet.
NOISY_SET_SHAPE = (48, 128, 192)
NOISY_SPARSE, NOISY_MEDIUM, NOISY_CROWDED = 30, 65, 130
NOISY_SETS = (
    CandidateSet("sparse", NOISY_SPARSE, 96, (2, 1, 1), NOISY),
    CandidateSet("medium", NOISY_MEDIUM, 64, (2, 1, 1), NOISY),
    CandidateSet("medium", NOISY_MEDIUM, 96, (2, 1, 1), NOISY),
    CandidateSet("crowded", NOISY_CROWDED, 64, (2, 1, 1), NOISY),
    CandidateSet("crowded", NOISY_CROWDED, 96, (2, 1, 1), NOISY),
)
CANDIDATES_PER_NUCLEUS = 110
#: NMS threshold (StarDist3D's default).
DEFAULT_THRESH = 0.3
#: runs of the fast NMS and of both renderers per set (the median counts).
DEFAULT_REPEAT = 3
#: the HPC step's candidate volume: noisy, interpenetrating nuclei (NMS-heavy) as in issue
#: #15, large enough that the worker's start-up (imports, loading numba's cached machine code:
#: about 2 s) is a small part of the fast run, as it is of a real one.
DEFAULT_HPC_SHAPE = (64, 512, 512)
DEFAULT_HPC_NUCLEI = 900
DEFAULT_HPC_RAYS = 96
HPC_ANISOTROPY = (2, 1, 1)
#: one tile per worker, as with the config's default tile shape on a volume this size.
DEFAULT_TILE_SHAPE = (None, 256, 256)
DEFAULT_CHUNK_SHAPE = (24, 64, 64)
#: prediction block shape the HPC candidate file is written in (as local_prediction.py would).
CANDIDATE_BLOCK_SHAPE = (None, 64, 64)
SEED = 0
#: targets of the report.
SPEED_RATIO_TARGET = 50.0
F1_TARGET = 0.999
HPC_RATIO_TARGET = 25.0
IOU_THRESH = 0.5
EPSILON_SECONDS = 1e-9


# ---------------------------------------------------------------------------------------------
# threads


def openmp_threads():
    """``omp_get_max_threads()`` of the OpenMP runtime StarDist's C extension loaded here."""
    import ctypes

    import stardist.lib.stardist3d  # noqa: F401  (loads the library and its libgomp)
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "libgomp" in line})
    if not paths:
        return None
    library = ctypes.CDLL(next((p for p in paths if "stardist" in p), paths[0]))
    return library.omp_get_max_threads()


# ---------------------------------------------------------------------------------------------
# candidates


class Candidates(NamedTuple):
    """A candidate set in the total order (rank 1 first), with StarDist's rays."""
    shape: tuple
    rays: object
    geometry: RayGeometry
    dist: np.ndarray
    points: np.ndarray
    scores: np.ndarray   # N..1: strictly decreasing, exact in float32


def generate(shape, nuclei, n_rays, anisotropy, seed, kind):
    """Rays, prob, dist and points of up to ``nuclei`` synthetic nuclei of ``kind``."""
    if kind == NOISY:
        return noisy_candidates(shape, random_centres(shape, nuclei, seed), n_rays=n_rays,
                                anisotropy=anisotropy, seed=seed)
    centres = separated_centres(shape, nuclei, MIN_CENTRE_DISTANCE, anisotropy=anisotropy,
                                seed=seed)
    return dense_candidates(shape, centres, n_rays=n_rays, anisotropy=anisotropy,
                            candidates_per_nucleus=CANDIDATES_PER_NUCLEUS, seed=seed)


def in_total_order(shape, rays, prob, dist, points, rows):
    """Candidates sorted into the total order (ties broken by ``rows``)."""
    order = total_order(prob, points, rows)
    geometry = RayGeometry(np.asarray(rays.vertices, np.float32),
                           np.asarray(rays.faces, np.int32))
    return Candidates(tuple(shape), rays, geometry, dist[order], points[order],
                      rank_scores(np.arange(len(order))))


def make_candidates(shape, nuclei, n_rays, anisotropy, seed, kind=TISSUE):
    """Synthetic candidates of up to ``nuclei`` nuclei, sorted into the total order."""
    rays, prob, dist, points = generate(shape, nuclei, n_rays, anisotropy, seed, kind)
    return in_total_order(shape, rays, prob, dist, points, np.arange(len(prob)))


def scaled_shape(shape, scale):
    """``shape`` with its x extent multiplied by ``scale``."""
    return (*shape[:2], max(1, round(shape[2] * scale)))


# ---------------------------------------------------------------------------------------------
# step 1: the two NMS backends


def fast_nms(candidates, thresh):
    """Kept flags (in rank order) of the fast backend, and how it decided its pairs."""
    from stardist_hpc.segment.nms_fast import suppress_counting_pairs
    return suppress_counting_pairs(candidates.dist, candidates.points, candidates.geometry,
                                   thresh)


def stardist_nms(candidates, thresh):
    """Kept flags (in rank order) of StarDist's NMS."""
    from stardist.nms import non_maximum_suppression_3d_inds
    return non_maximum_suppression_3d_inds(candidates.dist, candidates.points, candidates.rays,
                                           candidates.scores, thresh, verbose=False)


def timed(function, *args):
    """``function(*args)``, its wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def median_timed(repeat, function, *args):
    """Result, median wall and median CPU seconds of ``repeat`` runs of ``function(*args)``."""
    runs = [timed(function, *args) for _ in range(repeat)]
    return (runs[0][0], statistics.median(r[1] for r in runs),
            statistics.median(r[2] for r in runs))


def stardist_labels(candidates, kept):
    """Label volume of the kept candidates as StarDist renders it (ids 1.. in rank order)."""
    from stardist.geometry import polyhedron_to_label
    if not kept.any():
        return np.zeros(candidates.shape, np.uint32)
    ids = np.arange(1, int(kept.sum()) + 1)
    return polyhedron_to_label(candidates.dist[kept], candidates.points[kept], candidates.rays,
                               candidates.shape, prob=candidates.scores[kept], labels=ids,
                               verbose=False)


class Matching(NamedTuple):
    """Objects of two label volumes matched at IoU 0.5."""
    tp: int
    fp: int
    fn: int

    @property
    def f1(self):
        """F1 score (1.0 when both volumes are empty)."""
        return 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1) if self.tp or self.fp \
            or self.fn else 1.0


def match(a, b):
    """Match the objects of label volumes ``a`` and ``b`` at IoU 0.5."""
    from stardist.matching import matching
    if not a.any() and not b.any():
        return Matching(0, 0, 0)
    m = matching(a, b, thresh=IOU_THRESH)
    return Matching(int(m.tp), int(m.fp), int(m.fn))


def agreement(a, b):
    """|a & b| / |a | b| of two boolean kept arrays (1.0 when both are empty)."""
    either = int(np.sum(a | b))
    return float(np.sum(a & b)) / either if either else 1.0


class NmsResult(NamedTuple):
    """What step 1 measured on one set."""
    n: int
    kept: dict           # backend -> kept flags
    wall: dict           # backend -> seconds
    cpu: dict            # backend -> CPU seconds
    agreement: float
    matching: Matching
    pairs: object        # nms_fast.PairCounts of the fast backend

    @property
    def f1(self):
        """F1 of the two kept sets' label volumes."""
        return self.matching.f1

    def rate(self, backend):
        """Candidates per second of ``backend``."""
        return self.n / max(self.wall[backend], EPSILON_SECONDS)

    @property
    def ratio(self):
        """Speed ratio fast / StarDist (wall time)."""
        return self.wall["stardist"] / max(self.wall["fast"], EPSILON_SECONDS)

    @property
    def cpu_ratio(self):
        """Speed ratio fast / StarDist in CPU time."""
        return self.cpu["stardist"] / max(self.cpu["fast"], EPSILON_SECONDS)


def compare_nms(candidates, thresh, repeat):
    """Run both backends on one set; time them and compare their kept sets."""
    kept, wall, cpu = {}, {}, {}
    (kept["fast"], pairs), wall["fast"], cpu["fast"] = median_timed(repeat, fast_nms,
                                                                    candidates, thresh)
    kept["stardist"], wall["stardist"], cpu["stardist"] = timed(stardist_nms, candidates, thresh)
    a, b = kept["fast"], kept["stardist"]
    return NmsResult(len(a), kept, wall, cpu, agreement(a, b),
                     match(stardist_labels(candidates, a), stardist_labels(candidates, b)),
                     pairs)


# ---------------------------------------------------------------------------------------------
# step 2: rasterising kept polyhedra


def render(dist, points, geometry, shape, backend):
    """Label volume of polyhedra (ids 1.. in the given order) by ``render.render_labels``."""
    ids = np.arange(1, len(dist) + 1, dtype=np.uint32)
    return render_labels(dist, points, ids, geometry, Box((0, 0, 0), tuple(shape)), shape,
                         backend)


class RenderResult(NamedTuple):
    """What step 2 measured on one set."""
    n_objects: int
    labelled: int        # voxels render_labels labels
    differing: int       # voxels whose label differs
    wall: dict           # 'fast' / 'exact' -> seconds


def compare_rendering(candidates, kept, repeat):
    """Rasterise the kept polyhedra with both renderers; time them and count differing voxels."""
    args = (candidates.dist[kept], candidates.points[kept], candidates.geometry,
            candidates.shape)
    fast, fast_wall, _ = median_timed(repeat, render, *args, LABELING_BACKEND_FAST)
    exact, exact_wall, _ = median_timed(repeat, render, *args, LABELING_BACKEND_STARDIST)
    return RenderResult(int(kept.sum()), int(np.count_nonzero(exact)),
                        int(np.count_nonzero(fast != exact)),
                        {"fast": fast_wall, "exact": exact_wall})


# ---------------------------------------------------------------------------------------------
# step 3: the whole HPC step


def write_hpc_candidates(path, shape, nuclei, n_rays, thresh, seed):
    """Write an NMS-heavy candidate file of noisy, interpenetrating nuclei; return its
    candidate count."""
    rays, prob, dist, points = generate(shape, nuclei, n_rays, HPC_ANISOTROPY, seed, NOISY)
    write_candidate_file(path, shape, rays, prob, dist, points,
                         block_shape=CANDIDATE_BLOCK_SHAPE, nms_thresh=thresh)
    log.info("wrote %s: shape %s, %d nuclei, %d candidates", path, shape, nuclei, len(prob))
    return len(prob)


def write_config(path, candidates, run_dir, args):
    """Write the HpcConfig YAML of the fast run (its labels and work_dir in ``run_dir``)."""
    import yaml
    labeling = {"chunk_shape": list(args.chunk_shape)}
    if args.labeling_backend is not None:
        labeling["backend"] = args.labeling_backend
    raw = {"input": {"prediction": str(candidates)},
           "model": {"basedir": None, "name": None},
           "output": {"labels": str(run_dir / "label.h5"), "work_dir": str(run_dir / "work")},
           "nms": {"tile_shape": list(args.tile_shape), "backend": "fast"},
           "labeling": labeling,
           "cluster": {"mode": "local", "local": {"n_workers": 1, "threads_per_worker": 1}}}
    Path(path).write_text(yaml.safe_dump(raw))


class HpcResult(NamedTuple):
    """One run of the HPC step, its labels given as candidate file row + 1."""
    wall: float
    cpu: float
    summary: object      # hpc.RunSummary
    labels: np.ndarray
    rows: np.ndarray     # candidate file rows of the kept candidates


def run_hpc(candidate_path, run_dir, args):
    """Run ``hpc.run`` with the fast NMS in ``run_dir``; time it and read its label volume."""
    import h5py

    from stardist_hpc.config import HpcConfig, load
    from stardist_hpc.io.label_file import LABELS
    from stardist_hpc.io.survivors import SurvivorFile
    from stardist_hpc.segment import step as hpc
    from stardist_hpc.segment.params import SURVIVORS
    run_dir.mkdir()
    config_path = run_dir / "hpc.yaml"
    write_config(config_path, candidate_path, run_dir, args)
    config = load(HpcConfig, config_path)
    log.info("HPC step with nms.backend fast (1 worker)")
    summary, wall, cpu = timed(hpc.run, config)
    with h5py.File(run_dir / "label.h5", "r") as f:
        labels = f[LABELS][()]
    rows, ids = SurvivorFile(config.output.work_dir / SURVIVORS).read_columns("rows", "ids")
    row_of_id = np.zeros(int(ids.max(initial=0)) + 1, np.uint32)
    row_of_id[ids.astype(np.int64)] = rows + 1
    return HpcResult(wall, cpu, summary, row_of_id[labels], rows)


class Reference(NamedTuple):
    """StarDist's NMS and ``polyhedron_to_label`` on the HPC step's candidates."""
    nms: float           # seconds
    labeling: float      # seconds
    labels: np.ndarray   # candidate file row + 1
    rows: np.ndarray     # candidate file rows of the kept candidates

    @property
    def wall(self):
        """Seconds of both."""
        return self.nms + self.labeling


def stardist_reference(candidate_path, thresh):
    """StarDist's NMS + ``polyhedron_to_label`` on a candidate file, in the total order."""
    from stardist.geometry import polyhedron_to_label

    from stardist_hpc.geometry.rays import stardist_rays
    from stardist_hpc.io.candidates import CandidateFile
    candidate_file = CandidateFile(candidate_path)
    shape = tuple(candidate_file.meta.image_shape)
    rows, prob, dist, points = candidate_file.read_box((0, 0, 0), shape)
    rays = stardist_rays(candidate_file.meta.rays_json)
    candidates = in_total_order(shape, rays, prob, dist, points, rows)
    rows = rows[total_order(prob, points, rows)]
    log.info("StarDist's NMS on the HPC step's %d candidates", len(rows))
    kept, nms_seconds, _ = timed(stardist_nms, candidates, thresh)
    labels, label_seconds, _ = timed(functools.partial(
        polyhedron_to_label, prob=candidates.scores[kept], labels=rows[kept] + 1,
        verbose=False), candidates.dist[kept], candidates.points[kept], rays, shape)
    return Reference(nms_seconds, label_seconds, labels.astype(np.uint32), rows[kept])


def measure_hpc(workdir, args):
    """Write the HPC candidate file, run the step and StarDist's reference on it."""
    shape = scaled_shape(args.hpc_shape, args.scale)
    nuclei = round(args.hpc_nuclei * args.scale)
    path = workdir / "prediction.h5"
    n = write_hpc_candidates(path, shape, nuclei, args.hpc_rays, args.thresh, SEED)
    return shape, nuclei, n, run_hpc(path, workdir / "fast", args), \
        stardist_reference(path, args.thresh)


def hpc_agreement(fast, reference, n):
    """Agreement of the kept candidates of the HPC step and of StarDist's NMS."""
    kept = [np.zeros(n, bool), np.zeros(n, bool)]
    kept[0][fast.rows], kept[1][reference.rows] = True, True
    return agreement(*kept)


# ---------------------------------------------------------------------------------------------
# report


def shape_text(shape):
    """``24x64x64``; a full axis (None) shows as ``full``."""
    return "x".join("full" if s is None else str(s) for s in shape)


#: column headers of :func:`describe_set`.
SET_HEADER = f"{'kind':<7}{'density':<8}{'nucl':>5}{'rays':>5}{'aniso':>6}"


def describe_set(spec):
    """Short description of a candidate set, under :data:`SET_HEADER`."""
    aniso = "".join(str(int(a)) for a in spec.anisotropy)
    return f"{spec.kind:<7}{spec.density:<8}{spec.nuclei:>5}{spec.n_rays:>5}{aniso:>6}"


def print_nms_table(specs, results):
    """Step 1: one row per candidate set."""
    header = (f"{SET_HEADER}{'cand':>7}{'keptF':>6}{'keptS':>6}{'sd s':>7}{'fast s':>8}"
              f"{'ratio':>7}{'cpu rt':>7}{'agree':>7}{'F1':>7}")
    print(header)
    print("-" * len(header))
    for spec, r in zip(specs, results):
        print(f"{describe_set(spec)}{r.n:>7}{int(r.kept['fast'].sum()):>6}"
              f"{int(r.kept['stardist'].sum()):>6}{r.wall['stardist']:>7.1f}"
              f"{r.wall['fast']:>8.3f}{r.ratio:>7.1f}{r.cpu_ratio:>7.1f}"
              f"{r.agreement:>7.3f}{r.f1:>7.3f}")
    print("s: wall seconds (fast: median of the repeats); ratio: StarDist / fast in wall time, "
          "cpu rt: in CPU time;\nagree: |kept both| / |kept either|; "
          f"F1: matching of the two kept sets' label volumes at IoU {IOU_THRESH}")


def print_pair_table(specs, results):
    """Step 1, continued: how the fast backend decided its pairs, one row per set."""
    header = (f"{SET_HEADER}{'pairs':>9}{'boxes':>9}{'bounds':>8}{'counted':>9}{'qhull':>7}"
              f"{'vox/pair':>9}")
    print(header)
    print("-" * len(header))
    for spec, r in zip(specs, results):
        p = r.pairs
        print(f"{describe_set(spec)}{p.tested:>9}{p.by_boxes:>9}{p.by_bounds:>8}"
              f"{p.by_counting:>9}{p.by_qhull:>7}{p.voxels_per_counted_pair:>9.0f}")
    print("pairs: (kept i, later j) whose boxes meet; decided by boxes: the shared box is too "
          "small; bounds: i's voxels in it are too few;\ncounted: by counting voxels; qhull: "
          "borderline counts, by StarDist's Qhull check; vox/pair: inside tests per counted "
          "pair")


def print_render_table(specs, results):
    """Step 2: one row per candidate set."""
    header = (f"{SET_HEADER}{'objects':>8}{'voxels':>9}{'differ':>8}{'fast ms':>9}"
              f"{'exact ms':>9}{'ratio':>7}")
    print(header)
    print("-" * len(header))
    for spec, r in zip(specs, results):
        print(f"{describe_set(spec)}{r.n_objects:>8}{r.labelled:>9}{r.differing:>8}"
              f"{1e3 * r.wall['fast']:>9.1f}{1e3 * r.wall['exact']:>9.1f}"
              f"{r.wall['exact'] / max(r.wall['fast'], EPSILON_SECONDS):>7.1f}")
    labelled = sum(r.labelled for r in results)
    differing = sum(r.differing for r in results)
    fast, exact = (sum(r.wall[k] for r in results) for k in ("fast", "exact"))
    print(f"all sets: {differing} of {labelled} labelled voxels differ "
          f"({differing / max(labelled, 1):.1e}); the fast renderer is "
          f"{exact / max(fast, EPSILON_SECONDS):.1f}x faster ({1e3 * fast:.1f} vs "
          f"{1e3 * exact:.1f} ms)")
    print("voxels: labelled by the 'stardist' renderer; differ: voxels whose label differs "
          "between the two; ms: median of the repeats;\nratio: stardist / fast "
          "(information, no target)")


def labeling_backend(args):
    """The labeling.backend of the HPC step runs."""
    from stardist_hpc.config import LabelingSection
    return args.labeling_backend or LabelingSection().backend


def print_hpc(shape, nuclei, n, fast, reference, args):
    """Step 3: the fast HPC step and StarDist's reference on its candidates."""
    print(f"volume {shape_text(shape)}, {nuclei} noisy nuclei, {n} candidates, "
          f"{args.hpc_rays} rays, tile {shape_text(args.tile_shape)}, chunk "
          f"{shape_text(args.chunk_shape)}, labeling.backend {labeling_backend(args)}, "
          f"cluster.mode local, 1 worker, 1 thread")
    header = f"{'run':<30}{'wall':>7}{'stages':>8}{'nms':>7}{'label':>7}{'objects':>8}"
    print(header)
    print("-" * len(header))
    s = fast.summary.seconds
    print(f"{'hpc.run, nms.backend fast':<30}{fast.wall:>7.1f}{stage_seconds(fast):>8.1f}"
          f"{s.nms:>7.1f}{s.labeling:>7.1f}{fast.summary.n_objects:>8}")
    print(f"{'StarDist NMS + polyhedron_to_label':<30}{reference.wall:>7.1f}{'':>8}"
          f"{reference.nms:>7.1f}{reference.labeling:>7.1f}{len(reference.rows):>8}")
    print(f"hpc.run: {fast.summary.n_rounds} round(s), {fast.summary.n_reruns} rerun(s), "
          f"driver CPU {fast.cpu:.1f} s; wall: incl. cluster start/stop (s); stages: sum of "
          "its stages; StarDist's run in this process")


def stage_seconds(result):
    """Sum of the stage seconds of an HPC run."""
    s = result.summary.seconds
    return s.index + s.nms + s.gather + s.labeling + s.write


def print_summary(nms_results, render_results, fast, reference, hpc_n):
    """The targets, one line each, with PASS/MISS."""
    ratios = [r.ratio for r in nms_results]
    f1s = [r.f1 for r in nms_results]
    pooled = Matching(*(sum(getattr(r.matching, k) for r in nms_results)
                        for k in Matching._fields))
    agreements = [r.agreement for r in nms_results]
    hpc_ratio = reference.wall / max(fast.wall, EPSILON_SECONDS)
    hpc_f1 = match(fast.labels, reference.labels).f1
    differing = np.count_nonzero(fast.labels != reference.labels)
    rows = [
        ("NMS speed StarDist / fast, worst set", f"{min(ratios):.1f}",
         f">= {SPEED_RATIO_TARGET:g}", min(ratios) >= SPEED_RATIO_TARGET),
        ("kept sets' agreement, worst set", f"{min(agreements):.4f}", "= 1",
         min(agreements) == 1.0),
        (f"kept sets' F1 at IoU {IOU_THRESH}, worst set", f"{min(f1s):.4f}",
         f">= {F1_TARGET}", min(f1s) >= F1_TARGET),
        (f"kept sets' F1 at IoU {IOU_THRESH}, all sets pooled", f"{pooled.f1:.4f}",
         "(information)", None),
        ("labeling: 'fast' vs 'stardist' renderer, voxels differing",
         f"{sum(r.differing for r in render_results)}", "(information)", None),
        ("HPC step wall vs StarDist NMS + polyhedron_to_label", f"{hpc_ratio:.1f}",
         f">= {HPC_RATIO_TARGET:g}", hpc_ratio >= HPC_RATIO_TARGET),
        (f"HPC step label volume's F1 at IoU {IOU_THRESH}", f"{hpc_f1:.4f}", f">= {F1_TARGET}",
         hpc_f1 >= F1_TARGET),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:>8}  {target:<13}  {'' if ok is None else verdict(ok)}")
    print(f"  HPC step: {fast.wall:.1f} s (stages {stage_seconds(fast):.1f} s: "
          f"{reference.wall / max(stage_seconds(fast), EPSILON_SECONDS):.1f}x) vs "
          f"{reference.wall:.1f} s for StarDist's NMS + polyhedron_to_label; kept candidates' "
          f"agreement {hpc_agreement(fast, reference, hpc_n):.4f}, {differing} label voxels "
          "differ")
    print(f"  pooled over the sets: {pooled.tp} objects matched, {pooled.fp + pooled.fn} "
          f"unmatched")


# ---------------------------------------------------------------------------------------------
# main


def warm_up(thresh):
    """Compile (or load from numba's cache) everything that is timed, on a tiny set."""
    tiny = make_candidates((8, 16, 16), 2, 64, (2, 1, 1), SEED)
    kept, _ = fast_nms(tiny, thresh)
    stardist_nms(tiny, thresh)
    for backend in (LABELING_BACKEND_FAST, LABELING_BACKEND_STARDIST):
        render(tiny.dist[kept], tiny.points[kept], tiny.geometry, tiny.shape, backend)


def measure_sets(args):
    """Steps 1 and 2 on every candidate set."""
    specs, shapes, nms_results, render_results = [], [], [], []
    all_sets = CANDIDATE_SETS + NOISY_SETS
    for i, spec in enumerate(all_sets):
        shape = scaled_shape(NOISY_SET_SHAPE if spec.kind == NOISY else SET_SHAPE, args.scale)
        spec = spec._replace(nuclei=round(spec.nuclei * args.scale))
        candidates = make_candidates(shape, spec.nuclei, spec.n_rays, spec.anisotropy, SEED + i,
                                     spec.kind)
        log.info("set %d/%d: %s %s nuclei %d, %d rays, anisotropy %s: %d candidates", i + 1,
                 len(all_sets), spec.kind, spec.density, spec.nuclei, spec.n_rays,
                 spec.anisotropy, len(candidates.dist))
        result = compare_nms(candidates, args.thresh, args.repeat)
        log.info("  fast %.3f s, stardist %.1f s, kept %d / %d, F1 %.4f", result.wall["fast"],
                 result.wall["stardist"], result.kept["fast"].sum(),
                 result.kept["stardist"].sum(), result.f1)
        specs.append(spec)
        shapes.append(shape)
        nms_results.append(result)
        render_results.append(compare_rendering(candidates, result.kept["fast"], args.repeat))
    return specs, shapes, nms_results, render_results


def parse_args(argv):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    triple = dict(type=int, nargs=3, metavar=("Z", "Y", "X"))

    def axis(value):
        return None if value.lower() in ("none", "null") else int(value)

    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the x extent and the nuclei of every set and of the HPC "
                             "volume (default: 1)")
    parser.add_argument("--thresh", type=float, default=DEFAULT_THRESH, help="NMS threshold")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help="runs of the fast NMS and of the renderers per set (median)")
    parser.add_argument("--hpc-shape", default=DEFAULT_HPC_SHAPE, **triple,
                        help="HPC step volume (before --scale)")
    parser.add_argument("--hpc-nuclei", type=int, default=DEFAULT_HPC_NUCLEI,
                        help="nuclei in the HPC step volume (before --scale)")
    parser.add_argument("--hpc-rays", type=int, default=DEFAULT_HPC_RAYS,
                        help="rays of the HPC step candidates")
    parser.add_argument("--tile-shape", type=axis, nargs=3, default=DEFAULT_TILE_SHAPE,
                        metavar=("Z", "Y", "X"), help="nms.tile_shape of the HPC step (none: "
                                                      "full axis)")
    parser.add_argument("--chunk-shape", default=DEFAULT_CHUNK_SHAPE, **triple,
                        help="labeling.chunk_shape of the HPC step")
    parser.add_argument("--labeling-backend", default=None,
                        choices=(LABELING_BACKEND_STARDIST, LABELING_BACKEND_FAST),
                        help="labeling.backend of both HPC step runs (default: the config's)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the HPC step's files go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        parser.error("--scale must be positive and --repeat at least 1")
    return args


def main(argv=None):
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    started = time.perf_counter()
    load_before = os.getloadavg()
    warm_up(args.thresh)
    log.info("warmed up (numba compiled or loaded from its cache)")
    specs, shapes, nms_results, render_results = measure_sets(args)
    workdir_context = (tempfile.TemporaryDirectory(prefix="nms_speed_") if args.workdir is None
                       else nullcontext(args.workdir))
    with workdir_context as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        hpc_shape, hpc_nuclei, hpc_n, hpc_fast, reference = measure_hpc(
            Path(workdir).resolve(), args)
    load_after = os.getloadavg()

    print(f"NMS speed benchmark: fast vs stardist backend, thresh {args.thresh}, "
          f"sets in {shape_text(shapes[0])} (tissue: {CANDIDATES_PER_NUCLEUS} candidates per "
          f"nucleus) and {shape_text(shapes[-1])} (noisy), scale {args.scale:g}, repeat "
          f"{args.repeat}")
    print(f"threads: OpenMP {openmp_threads()}, numba {numba.get_num_threads()}; machine "
          f"{os.cpu_count()} cores, load average (1 min) {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; total {time.perf_counter() - started:.0f} s")
    print()
    print("1. NMS on the candidate sets")
    print_nms_table(specs, nms_results)
    print()
    print_pair_table(specs, nms_results)
    print()
    print("2. rendering the fast backend's kept polyhedra: render_labels backend 'fast' "
          "(cone-table inside test) vs 'stardist' (port of StarDist's)")
    print_render_table(specs, render_results)
    print()
    print("3. the whole HPC step (hpc.run, nms.backend fast) vs StarDist's NMS + "
          "polyhedron_to_label on its candidates")
    print_hpc(hpc_shape, hpc_nuclei, hpc_n, hpc_fast, reference, args)
    print()
    print("targets")
    print_summary(nms_results, render_results, hpc_fast, reference, hpc_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
