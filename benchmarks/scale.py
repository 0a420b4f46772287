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
     before and after each batch, per task function (``nms_tiles``, ``gather_tiles``,
     ``render_chunks``): the per-core rates the plan (``--plan``) uses;
   * work_dir files and bytes and label.h5 bytes after the run.
3. Prints a table per size, then the growth exponents ``log(t16/t1) / log(n16/n1)`` of the
   step's time (sum of RunSummary.seconds) and of the driver's peak RSS, and the driver RSS
   ratio 16x/1x, against their targets (time exponent <= 1.05, RSS ratio <= 1.25), and the
   NMS work of the reruns against the first pass (candidates decided; RunSummary.nms_work).
4. With ``--tiling``: instead, the NMS stage alone on one worker (this process's executor,
   ``run_in_process``, in a fresh child per run), tiled against one untiled run of the same
   set: the 16x set with the default tiles, and a 64x512x512 set of the same density with 4
   tiles of 256x256. Prints candidates decided in the first pass and in the reruns (target:
   reruns / first pass <= 0.1), candidate pairs tested, and the NMS seconds tiled / untiled
   (targets <= 1.15 and <= 1.3).

How to run
----------
::

    .venv/bin/python benchmarks/scale.py                  # 1x, 4x, 16x
    .venv/bin/python benchmarks/scale.py --scales 1 4     # when time is short
    .venv/bin/python benchmarks/scale.py --tiling         # tiled vs untiled NMS

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
TASK_FUNCTIONS = ("nms_tiles", "gather_tiles", "render_chunks")
#: the tiling comparisons: (name, volume factor of BASE_SHAPE or a shape, tile shape, target of
#: NMS seconds tiled / untiled); None: the default tiles.
TILING_SETS = (("16x, default tiles", 16, None, 1.15),
               ("64x512x512, 4 tiles of 256x256", (64, 512, 512), (None, 256, 256), 1.3))
#: largest NMS work in reruns per first-pass work.
RERUN_RATIO_TARGET = 0.1
UNTILED = (None, None, None)


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
                  load_1min=os.getloadavg()[0],
                  nms_work=[w._asdict() for w in summary.nms_work])
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: candidate files, children, report


def tiling_child(candidates, run_dir, tile_shape):
    """Run the NMS stage of ``candidates`` in this process (one worker); print one JSON line."""
    from stardist_hpc.config import HpcConfig, arguments_config
    from stardist_hpc.io.candidates import CandidateFile
    from stardist_hpc.segment.cluster import run_in_process
    from stardist_hpc.segment.nms import plan_tiles, run_rounds
    from stardist_hpc.segment.step import resolve_params
    run_dir = Path(run_dir)
    config = arguments_config(HpcConfig, input={"prediction": candidates},
                              model={"basedir": None, "name": None},
                              output={"labels": run_dir / "label.h5", "work_dir": run_dir / "w"},
                              nms={"tile_shape": tile_shape}, cluster=None)
    params = resolve_params(config, CandidateFile(candidates))
    plans = plan_tiles(params.image_shape, params.tile_shape, params.halo)
    started = time.perf_counter()
    summary = run_rounds(params, plans, run_in_process)
    result = dict(seconds=time.perf_counter() - started, n_tiles=len(plans),
                  n_rounds=summary.n_rounds, n_reruns=summary.n_reruns,
                  first_pass=summary.first_pass._asdict(), reruns=summary.reruns._asdict(),
                  tile_shape=list(params.tile_shape), halo=list(params.halo),
                  load_1min=os.getloadavg()[0])
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def measure_tiling(workdir, sets):
    """Each tiling set tiled and untiled, in fresh children; ``{name: (tiled, untiled)}``."""
    from stardist_hpc.config import NmsSection
    from stardist_hpc.synthetic import write_dense_candidate_file
    results = {}
    for name, size, tile_shape, _ in sets:
        shape = scaled_shape(size) if isinstance(size, int) else size
        n_nuclei = round(BASE_NUCLEI * math.prod(shape) / math.prod(BASE_SHAPE))
        path = workdir / f"tiling_{'x'.join(map(str, shape))}.h5"
        n = write_dense_candidate_file(path, shape, n_nuclei, n_rays=N_RAYS,
                                       candidates_per_nucleus=CANDIDATES_PER_NUCLEUS, seed=SEED)
        log.info("%s: %d candidates", name, n)
        runs = []
        for tiles in (tile_shape or NmsSection().tile_shape, UNTILED):
            run_dir = workdir / f"tiling_{len(results)}_{len(runs)}"
            run_dir.mkdir()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--tiling-child", str(path),
                   str(run_dir), json.dumps(list(tiles))]
            runs.append(run_child(cmd, run_dir / "child.log", RESULT_PREFIX, REPO))
            log.info("%s, tiles %s: %s", name, tiles, runs[-1])
        results[name] = (n, *runs)
    return results


def print_tiling(sets, results):
    """Tiled vs untiled NMS per set: work of the first pass and the reruns, seconds."""
    for (name, _, _, target), (n, tiled, untiled) in zip(sets, results.values()):
        if "failed" in tiled or "failed" in untiled:
            print(f"{name}: a run failed (see the log)")
            continue
        first, reruns = tiled["first_pass"], tiled["reruns"]
        rerun_ratio = reruns["decided"] / max(first["decided"], 1)
        time_ratio = tiled["seconds"] / untiled["seconds"]
        print(f"{name}: {n:,} candidates, {tiled['n_tiles']} tiles of "
              f"{'x'.join(map(str, tiled['tile_shape']))}, halo {tiled['halo']}, "
              f"{tiled['n_rounds']} rounds, {tiled['n_reruns']} tile reruns")
        print(f"  decided: first pass {first['decided']:,} (untiled {n:,}: halo cost "
              f"{first['decided'] / n - 1:.1%}), reruns {reruns['decided']:,}; pairs tested: "
              f"{first['pairs']:,} + {reruns['pairs']:,} (untiled "
              f"{untiled['first_pass']['pairs']:,})")
        print(f"  NMS work reruns / first pass: {rerun_ratio:.4f}  target <= "
              f"{RERUN_RATIO_TARGET}  {verdict(rerun_ratio <= RERUN_RATIO_TARGET)}")
        print(f"  NMS seconds tiled / untiled (one worker): {time_ratio:.2f} "
              f"({tiled['seconds']:.1f} s vs {untiled['seconds']:.1f} s; kernel "
              f"{first['seconds'] + reruns['seconds']:.1f} s vs "
              f"{untiled['first_pass']['seconds']:.1f} s)  target <= {target}  "
              f"{verdict(time_ratio <= target)}  (load {tiled['load_1min']:.1f} / "
              f"{untiled['load_1min']:.1f})")


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


def print_rerun_work(results):
    """Candidates decided again in the reruns per candidate decided in the first pass."""
    for factor, (_, r) in results.items():
        if "failed" in r:
            continue
        first, reruns = r["nms_work"]
        ratio = reruns["decided"] / max(first["decided"], 1)
        print(f"{factor}x NMS work reruns / first pass: {ratio:.4f} ({reruns['decided']:,} / "
              f"{first['decided']:,} candidates decided)  target <= {RERUN_RATIO_TARGET}  "
              f"{verdict(ratio <= RERUN_RATIO_TARGET)}")


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
    parser.add_argument("--tiling", action="store_true",
                        help="tiled vs untiled NMS on one worker instead of the sizes")
    parser.add_argument("--tiling-sets", type=int, nargs="+",
                        default=tuple(range(len(TILING_SETS))),
                        help="which of the tiling sets to run (0: the 16x set with the default "
                             "tiles, 1: 64x512x512 with 4 tiles; default: both)")
    parser.add_argument("--child", nargs=2, metavar=("CANDIDATES", "RUN_DIR"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--tiling-child", nargs=3, metavar=("CANDIDATES", "RUN_DIR", "TILES"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark (or, with ``--child``, one of its measurements) and print the report."""
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))   # this checkout's package, not an installed one
    if args.child:
        return child_main(*args.child)
    if args.tiling_child:
        path, run_dir, tiles = args.tiling_child
        return tiling_child(path, run_dir, json.loads(tiles))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    load_before = os.getloadavg()
    workdir_context = (tempfile.TemporaryDirectory(prefix="scale_") if args.workdir is None
                       else nullcontext(args.workdir))
    with workdir_context as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if args.tiling:
            sets = [TILING_SETS[i] for i in args.tiling_sets]
            results = measure_tiling(Path(workdir).resolve(), sets)
            print(f"NMS stage on one worker, tiled vs untiled; load average (1 min) "
                  f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
            print_tiling(sets, results)
            return 0
        results = measure(Path(workdir).resolve(), args.scales)
    print(f"HPC step scale benchmark: defaults, {N_RAYS} rays, {CANDIDATES_PER_NUCLEUS} "
          f"candidates per nucleus, {N_WORKERS} local workers x 1 thread")
    print(f"machine: {os.cpu_count()} cores, load average (1 min) {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (others' work slows every size alike only if it "
          f"stays the same)")
    print_table(results)
    print_rates(results)
    print_rerun_work(results)
    print_growth(results)
    return 0 if all("failed" not in r for _, r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
