#!/usr/bin/env python
"""Scale benchmark of the HPC step: the same density at 1x, 4x and 16x the volume.

What it measures
----------------
1. Writes three synthetic candidate files at realistic density
   (``stardist_hpc.synthetic.write_dense_candidate_file``: 96 rays, anisotropy (2, 1, 1),
   88 candidates per nucleus, 2048 nuclei per 64x256x512 voxels), 1x, 4x and 16x in volume
   (the largest: 64x1024x2048, 32,768 nuclei, 2.88M candidates).
2. Segments each with ``segment_candidates`` and its defaults (tiles, chunks, backends) on a
   local Dask cluster of 2 worker processes with 1 thread, in a fresh child process per size,
   with a fresh work_dir. Inside the child:

   * the driver's peak RSS is the child's own high-water mark (``VmHWM``; it holds the
     scheduler, as a SLURM driver does; ``ru_maxrss`` would include the parent's peak, which
     execve preserves); each worker's peak RSS (``VmHWM``) and CPU seconds (``getrusage``)
     are taken inside the worker (``client.run``), so nothing else on the machine counts;
   * ``run_tasks`` is wrapped to count the Dask tasks and to take the workers' CPU seconds
     before and after each batch, per task function (``nms_tile``, ``gather_tile``,
     ``render_chunk``): the per-core rates the plan (``--plan``) uses;
   * work_dir files and bytes and label.h5 bytes after the run.
3. Prints a table per size, then the growth exponents ``log(t16/t1) / log(n16/n1)`` of the
   step's time (sum of RunSummary.seconds) and of the driver's peak RSS, and the driver RSS
   ratio 16x/1x, against their targets (time exponent <= 1.05, RSS ratio <= 1.25).

How to run
----------
::

    .venv/bin/python benchmarks/scale.py                  # 1x, 4x, 16x
    .venv/bin/python benchmarks/scale.py --scales 1 4     # when time is short

The report goes to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

from measure import high_water_rss_mib, run_child, verdict

log = logging.getLogger("benchmarks.scale")

REPO = Path(__file__).resolve().parents[1]
#: the 1x volume (z, y, x) and its nuclei; the density of the issue's realistic sets.
BASE_SHAPE = (64, 256, 512)
BASE_NUCLEI = 2048
#: candidates per nucleus and rays, as a trained 96-ray network predicts them.
CANDIDATES_PER_NUCLEUS = 88
N_RAYS = 96
#: volume factors measured; the y and x axes grow by sqrt of the factor each.
DEFAULT_SCALES = (1, 4, 16)
N_WORKERS = 2
SEED = 0
#: targets of the report.
TIME_EXPONENT_TARGET = 1.05
RSS_RATIO_TARGET = 1.25
#: prefix of the JSON line a child prints on stdout.
RESULT_PREFIX = "SCALE_RESULT "
STAGES = ("index", "nms", "gather", "labeling", "write", "outputs")
#: task functions whose worker CPU seconds are reported (the plan's rates).
TASK_FUNCTIONS = ("nms_tile", "gather_tile", "render_chunk")


def scaled_shape(factor):
    """The volume ``factor`` times :data:`BASE_SHAPE` (y and x grow, z stays: a thin slab)."""
    side = math.isqrt(factor)
    if side * side != factor:
        raise SystemExit(f"--scales: expected squares (1, 4, 16, ...), got {factor}")
    z, y, x = BASE_SHAPE
    return (z, y * side, x * side)


# ---------------------------------------------------------------------------------------------
# inside a child process


def _worker_usage():
    """Peak RSS (MiB) and CPU seconds of the worker process this runs in."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return high_water_rss_mib(), usage.ru_utime + usage.ru_stime


def _workers_cpu(client):
    return sum(cpu for _, cpu in client.run(_worker_usage).values())


def _measuring(run_tasks, client, counts, cpu):
    """Wrap ``run_tasks``: count tasks and the workers' CPU seconds per task function."""
    def wrapped(dask_client, function, argument_tuples, description, **kwargs):
        before = _workers_cpu(client)
        yield from run_tasks(dask_client, function, argument_tuples, description, **kwargs)
        counts[function.__name__] += len(argument_tuples)
        cpu[function.__name__] += _workers_cpu(client) - before
    return wrapped


def _tree_size(folder):
    """Files and bytes below ``folder``."""
    sizes = [p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


def child_main(candidates, run_dir):
    """Segment ``candidates`` with the defaults on 2 local workers; print one JSON line."""
    import distributed

    from stardist_hpc import segment_candidates
    from stardist_hpc.config import LocalClusterSection
    from stardist_hpc.segment import step
    from stardist_hpc.segment.cluster import local_cluster_kwargs
    counts, cpu = defaultdict(int), defaultdict(float)
    run_dir = Path(run_dir)
    kwargs = local_cluster_kwargs(LocalClusterSection(n_workers=N_WORKERS, threads_per_worker=1))
    with distributed.LocalCluster(**kwargs) as cluster, distributed.Client(cluster) as client:
        step.run_tasks = _measuring(step.run_tasks, client, counts, cpu)
        started = time.perf_counter()
        summary = segment_candidates(candidates, run_dir / "label.h5", work_dir=run_dir / "work",
                                     client=client, show_progress=False)
        wall = time.perf_counter() - started
        workers = list(client.run(_worker_usage).values())
    files, work_bytes = _tree_size(run_dir / "work")
    result = dict(n_candidates=summary.n_candidates, n_objects=summary.n_objects,
                  n_rounds=summary.n_rounds, n_reruns=summary.n_reruns,
                  seconds=asdict(summary.seconds), wall_seconds=wall,
                  driver_peak_rss_mib=high_water_rss_mib(),
                  worker_peak_rss_mib=max(rss for rss, _ in workers),
                  worker_cpu_seconds=sum(c for _, c in workers),
                  tasks=dict(counts), task_cpu_seconds=dict(cpu),
                  work_files=files, work_bytes=work_bytes,
                  label_bytes=(run_dir / "label.h5").stat().st_size,
                  load_1min=os.getloadavg()[0])
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: candidate files, children, report


def _measure_size(candidates, run_dir):
    """Measure one size in a fresh Python process; return its result dict (or a failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(candidates),
           str(run_dir)]
    return run_child(cmd, Path(run_dir) / "child.log", RESULT_PREFIX, REPO)


def measure(workdir, scales):
    """Write each size's candidate file and segment it; return ``{factor: (shape, result)}``."""
    from stardist_hpc.synthetic import write_dense_candidate_file
    results = {}
    for factor in scales:
        shape = scaled_shape(factor)
        path = workdir / f"x{factor}_prediction.h5"
        started = time.perf_counter()
        n = write_dense_candidate_file(path, shape, BASE_NUCLEI * factor, n_rays=N_RAYS,
                                       candidates_per_nucleus=CANDIDATES_PER_NUCLEUS, seed=SEED)
        log.info("%dx: wrote %d candidates of %d nuclei in %s (%.1f s)", factor, n,
                 BASE_NUCLEI * factor, "x".join(map(str, shape)), time.perf_counter() - started)
        run_dir = workdir / f"x{factor}"
        run_dir.mkdir()
        results[factor] = (shape, _measure_size(path, run_dir))
        log.info("%dx: %s", factor, results[factor][1])
    return results


def _step_seconds(result):
    return sum(result["seconds"].values())


def print_table(results):
    """One row per size: counts, rates, stage seconds, memory, tasks, files."""
    header = (f"{'size':<5}{'shape':>15}{'cand':>9}{'obj':>7}{'tasks':>7}{'reruns':>7}"
              f"{'c/wCPUs':>9}" + "".join(f"{s[:5]:>7}" for s in STAGES)
              + f"{'drvMiB':>7}{'wkMiB':>6}{'files':>6}{'workMB':>7}{'lblMB':>6}{'load':>5}")
    print(header)
    print("-" * len(header))
    for factor, (shape, r) in results.items():
        label = f"{factor}x"
        if "failed" in r:
            print(f"{label:<5}{'x'.join(map(str, shape)):>15}  FAILED: {r['failed']}")
            continue
        rate = r["n_candidates"] / r["worker_cpu_seconds"]
        print(f"{label:<5}{'x'.join(map(str, shape)):>15}{r['n_candidates']:>9}"
              f"{r['n_objects']:>7}{sum(r['tasks'].values()):>7}{r['n_reruns']:>7}{rate:>9.0f}"
              + "".join(f"{r['seconds'][s]:>7.1f}" for s in STAGES)
              + f"{r['driver_peak_rss_mib']:>7.0f}{r['worker_peak_rss_mib']:>6.0f}"
              f"{r['work_files']:>6}{r['work_bytes'] / 1e6:>7.1f}{r['label_bytes'] / 1e6:>6.1f}"
              f"{r['load_1min']:>5.1f}")
    print("c/wCPUs: candidates per worker CPU-second (both workers' getrusage); stage columns: "
          "RunSummary.seconds; drvMiB / wkMiB: peak RSS of the driver (with the scheduler) / "
          "the largest worker; workMB: work_dir; lblMB: label.h5; load: 1-min load at the end")


def print_rates(results):
    """Worker CPU seconds per task function and candidates per core-second (the plan's rates)."""
    for factor, (_, r) in results.items():
        if "failed" in r:
            continue
        parts = [f"{name} {r['task_cpu_seconds'].get(name, 0.0):.1f} s "
                 f"({r['n_candidates'] / max(r['task_cpu_seconds'].get(name, 0.0), 1e-9):.0f} "
                 f"cand/core-s, {r['tasks'].get(name, 0)} tasks)" for name in TASK_FUNCTIONS]
        print(f"{factor}x worker CPU: " + "; ".join(parts)
              + f"; write {r['n_candidates'] / max(r['seconds']['write'], 1e-9):.0f} cand/s")


def print_growth(results):
    """Growth exponents of the step's time and the driver's RSS, smallest to largest size."""
    done = {f: r for f, (_, r) in results.items() if "failed" not in r}
    if len(done) < 2:
        print("fewer than two sizes finished: no growth exponents")
        return
    small, large = done[min(done)], done[max(done)]
    growth = math.log(large["n_candidates"] / small["n_candidates"])
    time_exponent = math.log(_step_seconds(large) / _step_seconds(small)) / growth
    rss_ratio = large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"]
    print(f"{max(done)}x vs {min(done)}x: time exponent {time_exponent:.2f} "
          f"({_step_seconds(small):.1f} s -> {_step_seconds(large):.1f} s)  target <= "
          f"{TIME_EXPONENT_TARGET}  {verdict(time_exponent <= TIME_EXPONENT_TARGET)}")
    print(f"{max(done)}x vs {min(done)}x: driver RSS exponent {math.log(rss_ratio) / growth:.2f}, "
          f"ratio {rss_ratio:.2f}  target <= {RSS_RATIO_TARGET}  "
          f"{verdict(rss_ratio <= RSS_RATIO_TARGET)}")


def parse_args(argv):
    """Command-line options (``--child`` is internal: it runs one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=DEFAULT_SCALES,
                        help="volume factors (squares), default 1 4 16")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="candidate files, work_dirs and logs (default: a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("CANDIDATES", "RUN_DIR"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark (or, with ``--child``, one of its measurements) and print the report."""
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))   # this checkout's package, not an installed one
    if args.child:
        return child_main(*args.child)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    load_before = os.getloadavg()
    workdir_context = (tempfile.TemporaryDirectory(prefix="scale_") if args.workdir is None
                       else nullcontext(args.workdir))
    with workdir_context as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        results = measure(Path(workdir).resolve(), args.scales)
    print(f"HPC step scale benchmark: defaults, {N_RAYS} rays, {CANDIDATES_PER_NUCLEUS} "
          f"candidates per nucleus, {N_WORKERS} local workers x 1 thread")
    print(f"machine: {os.cpu_count()} cores, load average (1 min) {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (others' work slows every size alike only if it "
          f"stays the same)")
    print_table(results)
    print_rates(results)
    print_growth(results)
    return 0 if all("failed" not in r for _, r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
