#!/usr/bin/env python
"""Benchmark of the HPC step (distributed NMS + labeling), measured side by side in one run.

What it measures
----------------
1. Writes two synthetic candidate files (``prediction.h5`` as local_prediction.py writes it):
   one of ``--shape`` with ``--nuclei`` nuclei, and one twice as large along every axis with
   8x the nuclei (the same density). Each nucleus gets 20-30 jittered candidates with
   ellipsoid ray lengths, like a network's output (the generator mirrors the one in
   ``tests/conftest.py``; the library has none).
2. Runs ``hpc_prediction.py``'s ``main`` (cluster.mode local) on each file in a fresh
   subprocess, with the same ``--tile-shape`` and ``--chunk-shape`` (so the large file has 8x
   the NMS tiles and label chunks) and a fresh work_dir per run. Each child reports, as one
   JSON line, the driver's own peak RSS (``VmHWM``; ``ru_maxrss`` would be this parent's peak
   once it exceeds the child's, execve keeps it; the Dask worker processes are not
   included), its RSS after the imports, its CPU seconds, those of the driver and its
   workers during the stages (``/proc`` of the process tree), the wall time of ``main`` and
   the ``RunSummary`` that ``hpc.run`` returns (including the seconds per stage).
3. Runs the large file once more with 1 worker, for the parallel efficiency, and, for each
   NMS backend, with 1 worker of 2 threads against 2 workers of 1 thread (the same cores:
   do threads of one worker process keep both busy?). With ``--repeats N`` every run of the
   large file is made N times, round by round (each round runs every layout once, so a slow
   spell of the machine hits the layouts of one round alike).
4. Prints a table and the ratios with their targets (PASS/MISS), each ratio per round and
   its median over the rounds (the verdict is the median's):

   * driver peak RSS large / small (2 workers each), target <= 1.25 (the driver holds only
     per-tile and per-object arrays, so its memory should not grow with the volume);
   * parallel efficiency t1 / (2 * t2) of ``hpc.run`` on the large file, target >= 0.9, and the
     best this machine allows it: on 2 cores the driver (which also writes the QC report) and
     the workers of the 2-worker run share them, so its stages last at least the CPU seconds
     that all of them spend in the stages / 2 (the 1-worker run leaves the driver a core of
     its own);
   * per backend, throughput of 1 worker x 2 threads / 2 workers x 1 thread (the time of the
     latter over the time of the former), whole step and NMS stage, target >= 0.9 (a worker
     of several threads runs each task in a task process of its own, so that neither
     StarDist's C NMS nor the GIL-holding parts of the fast backend make its threads wait).

How to run
----------
::

    .venv/bin/python benchmarks/hpc_step.py
    .venv/bin/python benchmarks/hpc_step.py --shape 32 256 256 --nuclei 150 --rays 64
    .venv/bin/python benchmarks/hpc_step.py --rays 96 --candidates-per-nucleus 80 90  # realistic
    .venv/bin/python benchmarks/hpc_step.py --thread-backends fast --repeats 5

The report goes to stdout, progress to stderr; each child's log is kept in ``--workdir``
(default: a temporary directory, deleted at the end). On a virtual machine the hypervisor may
take CPU time from the run (the ``steal`` column, in cores): a run with much steal measured the
host's other tenants as much as this code.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from measure import current_rss_mib, high_water_rss_mib, run_child, tree_cpu_seconds, verdict

from stardist_hpc.config import NMS_BACKEND_FAST, NMS_BACKEND_STARDIST, NmsSection
from stardist_hpc.synthetic import random_centres, synthetic_candidates, write_candidate_file

log = logging.getLogger("benchmarks.hpc_step")

REPO = Path(__file__).resolve().parents[1]
#: default shape (z, y, x) of the small candidate volume; the large one is 2x per axis.
DEFAULT_SHAPE = (32, 256, 256)
#: default nuclei in the small volume (the large one gets 8x: 1216 in 64x512x512). When it was
#: chosen, that was about a minute on one worker; the fast NMS made it ~10 s, so fixed costs
#: (the driver's, a second worker's start-up) now weigh on the parallel efficiency: the report
#: prints the bound they set. ``--rays 96 --candidates-per-nucleus 80 90`` is the realistic
#: density of a trained model's output (~25 s on one worker).
DEFAULT_NUCLEI = 152
#: default rays per candidate: few, to keep the benchmark fast.
DEFAULT_RAYS = 32
#: default NMS tile core and label chunk shapes (same for both volumes).
DEFAULT_TILE_SHAPE = (16, 64, 64)
DEFAULT_CHUNK_SHAPE = (16, 64, 64)
#: the large volume is this many times the small one along every axis.
SCALE_PER_AXIS = 2
#: default candidates per nucleus (inclusive range).
CANDIDATES_PER_NUCLEUS = (20, 30)
#: prediction block shape the candidate files are written in (as local_prediction.py would).
CANDIDATE_BLOCK_SHAPE = (None, 64, 64)
SEED = 0
#: default rounds of the large file's runs (the ratios' medians over them are the verdicts).
DEFAULT_REPEATS = 3
#: worker counts compared for the parallel efficiency, and threads of the threaded worker.
WORKERS_SERIAL, WORKERS_PARALLEL = 1, 2
THREADS_PARALLEL = 2
#: targets of the report.
MEMORY_RATIO_TARGET = 1.25
EFFICIENCY_TARGET = 0.9
THREADS_TARGET = 0.9
EPSILON_SECONDS = 1e-9
#: prefix of the JSON line a child prints on stdout.
RESULT_PREFIX = "HPC_STEP_RESULT "
#: fields of the "cpu" line of /proc/stat (user nice system idle iowait irq softirq steal).
IDLE_FIELD, IOWAIT_FIELD, STEAL_FIELD = 3, 4, 7
STAGES = ("index", "nms", "gather", "labeling", "write", "outputs")


# ---------------------------------------------------------------------------------------------
# synthetic candidates


def write_candidates(path, shape, n_nuclei, n_rays, seed,
                     candidates_per_nucleus=CANDIDATES_PER_NUCLEUS):
    """Write a synthetic candidate file block by block; return its candidate count."""
    centres = random_centres(shape, n_nuclei, seed)
    rays, prob, dist, points = synthetic_candidates(
        shape, centres, n_rays=n_rays, candidates_per_nucleus=tuple(candidates_per_nucleus),
        seed=seed)
    write_candidate_file(path, shape, rays, prob, dist, points, block_shape=CANDIDATE_BLOCK_SHAPE)
    log.info("wrote %s: shape %s, %d nuclei, %d candidates", path, shape, n_nuclei, len(prob))
    return len(prob)


# ---------------------------------------------------------------------------------------------
# measurements inside a child process




def _cpu_fields():
    """The machine's CPU time since boot by kind, in seconds (the "cpu" line of /proc/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    return [int(v) / ticks for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]


def system_busy_seconds():
    """CPU seconds all processes of the machine have spent busy since boot, and the part of
    them that the hypervisor of a virtual machine took for others (steal)."""
    fields = _cpu_fields()
    idle = fields[IDLE_FIELD] + fields[IOWAIT_FIELD]
    return sum(fields[:STEAL_FIELD + 1]) - idle, fields[STEAL_FIELD]


def own_cpu_seconds():
    """CPU seconds of this process and its reaped children (the Dask workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, workers.ru_utime + workers.ru_stime


def _recording(run, summaries):
    """Wrap ``hpc.run`` so that the ``RunSummary`` it returns (main drops it) is kept."""
    def wrapped(config):
        summaries.append(run(config))
        return summaries[-1]
    return wrapped


def _cpu_recording(segment, stage_cpu):
    """Wrap ``step.segment`` (the stages, once the cluster runs) to add the CPU seconds the
    driver and its workers spend in it to ``stage_cpu``."""
    def wrapped(*args, **kwargs):
        before = tree_cpu_seconds()
        try:
            return segment(*args, **kwargs)
        finally:
            stage_cpu.append(tree_cpu_seconds() - before)
    return wrapped


def child_main(config_path, n_workers, n_threads, backend):
    """Run hpc_prediction's main on ``config_path``; print the measurements as one JSON line."""
    sys.path.insert(0, str(REPO))
    import distributed  # noqa: F401  (imported here so the baseline includes it)

    import hpc_prediction
    from stardist_hpc.segment import step as hpc
    baseline = current_rss_mib()
    load = os.getloadavg()[0]
    summaries, stage_cpu = [], []
    hpc.run = _recording(hpc.run, summaries)
    hpc.segment = _cpu_recording(hpc.segment, stage_cpu)
    (busy_before, steal_before), (driver_before, _) = system_busy_seconds(), own_cpu_seconds()
    start = time.perf_counter()
    code = hpc_prediction.main([str(config_path), "--set",
                                f"cluster.local.n_workers={n_workers}", "--set",
                                f"cluster.local.threads_per_worker={n_threads}", "--set",
                                f"nms.backend={backend}"])
    wall = time.perf_counter() - start
    # the worker processes are children of the driver, reaped when the cluster closes
    driver_cpu, worker_cpu = own_cpu_seconds()
    ours = driver_cpu - driver_before + worker_cpu
    busy_after, steal_after = system_busy_seconds()
    other_cores = (busy_after - busy_before - ours) / max(wall, EPSILON_SECONDS)
    steal_cores = (steal_after - steal_before) / max(wall, EPSILON_SECONDS)
    if code != 0 or not summaries:
        return code or 1
    summary = summaries[-1]
    result = dict(n_candidates=summary.n_candidates, n_objects=summary.n_objects,
                  n_rounds=summary.n_rounds, n_reruns=summary.n_reruns,
                  seconds=asdict(summary.seconds), wall_seconds=wall,
                  peak_rss_mib=high_water_rss_mib(), baseline_rss_mib=baseline,
                  cpu_seconds=driver_cpu, worker_cpu_seconds=worker_cpu,
                  stage_cpu_seconds=sum(stage_cpu), load_1min=load,
                  other_cores=other_cores, steal_cores=steal_cores)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: candidate files, configs, children, report


def write_config(path, candidates, run_dir, args):
    """Write the HpcConfig YAML of one run (its own labels and work_dir in ``run_dir``)."""
    import yaml
    raw = {"input": {"prediction": str(candidates)},
           "model": {"basedir": None, "name": None},
           "output": {"labels": str(run_dir / "label.h5"), "work_dir": str(run_dir / "work")},
           "nms": {"tile_shape": list(args.tile_shape), "backend": args.nms_backend},
           "labeling": {"chunk_shape": list(args.chunk_shape)},
           "cluster": {"mode": "local", "local": {"n_workers": WORKERS_PARALLEL,
                                                  "threads_per_worker": 1}}}
    Path(path).write_text(yaml.safe_dump(raw))


@dataclass(frozen=True)
class Run:
    """One child run: which volume, workers x threads, backend, round, what it measured."""
    volume: str
    shape: tuple
    n_workers: int
    n_threads: int
    backend: str
    result: dict
    repeat: int = 0


def _run(config_path, n_workers, n_threads, backend, log_path):
    """Run one measurement in a fresh Python process; return its result dict (or a failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path),
           str(n_workers), str(n_threads), backend]
    return run_child(cmd, log_path, RESULT_PREFIX, REPO)


def measure_all(workdir, args):
    """Write both candidate files and run the children (the large file's ``args.repeats``
    times, round by round); return the runs."""
    shapes = {"small": tuple(args.shape), "large": tuple(SCALE_PER_AXIS * s for s in args.shape)}
    nuclei = {"small": args.nuclei, "large": args.nuclei * SCALE_PER_AXIS ** 3}
    files = {}
    for i, name in enumerate(shapes):
        files[name] = workdir / f"{name}_prediction.h5"
        write_candidates(files[name], shapes[name], nuclei[name], args.rays, SEED + i,
                         args.candidates_per_nucleus)
    chosen = args.nms_backend
    large = [("large", WORKERS_PARALLEL, 1, chosen), ("large", WORKERS_SERIAL, 1, chosen)]
    for backend in sorted({chosen, *args.thread_backends}, key=lambda b: b != chosen):
        if backend != chosen:
            large.append(("large", WORKERS_PARALLEL, 1, backend))
        large.append(("large", WORKERS_SERIAL, THREADS_PARALLEL, backend))
    plan = [(0, "small", WORKERS_PARALLEL, 1, chosen)] + [
        (repeat, *run) for repeat in range(args.repeats) for run in large]
    runs = []
    for repeat, name, n_workers, n_threads, backend in plan:
        run_dir = workdir / f"{name}_{n_workers}w{n_threads}t_{backend}_{repeat}"
        run_dir.mkdir()
        config = run_dir / "hpc.yaml"
        write_config(config, files[name], run_dir, args)
        log.info("running the %s volume %s with %d worker(s) x %d thread(s), backend %s", name,
                 shapes[name], n_workers, n_threads, backend)
        result = _run(config, n_workers, n_threads, backend, run_dir / "child.log")
        log.info("%s, %d x %d, %s: %s", name, n_workers, n_threads, backend, result)
        runs.append(Run(name, shapes[name], n_workers, n_threads, backend, result, repeat))
    return runs



def print_table(runs):
    """Print one row per run: counts, wall and stage seconds, driver CPU and memory."""
    header = (f"{'volume':<17}{'rd':>3}{'wk':>3}{'th':>3}{'nms':>9}{'cand':>7}{'obj':>6}"
              f"{'wall':>6}{'run':>6}"
              + "".join(f"{s[:5]:>6}" for s in STAGES)
              + f"{'drvCPU':>7}{'wkCPU':>6}{'load':>5}{'oth':>5}{'steal':>6}{'base':>5}"
              f"{'peak':>5}")
    print(header)
    print("-" * len(header))
    for run in runs:
        r, label = run.result, f"{run.volume} {'x'.join(map(str, run.shape))}"
        layout = f"{label:<17}{run.repeat:>3}{run.n_workers:>3}{run.n_threads:>3}{run.backend:>9}"
        if "failed" in r:
            print(f"{layout}  FAILED: {r['failed']}")
            continue
        seconds = r["seconds"]
        print(f"{layout}{r['n_candidates']:>7}{r['n_objects']:>6}"
              f"{r['wall_seconds']:>6.1f}{sum(seconds.values()):>6.1f}"
              + "".join(f"{seconds[s]:>6.1f}" for s in STAGES)
              + f"{r['cpu_seconds']:>7.1f}{r['worker_cpu_seconds']:>6.1f}"
              f"{r['load_1min']:>5.1f}{r['other_cores']:>5.1f}{r['steal_cores']:>6.2f}"
              f"{r['baseline_rss_mib']:>5.0f}{r['peak_rss_mib']:>5.0f}")
    print("rd: round; wall: main() incl. cluster start/stop; run: sum of hpc.run's stages (s); "
          "drvCPU / wkCPU: CPU s of the driver (with the QC report) / all workers;\n"
          "load: 1-min load average at the run's start; oth: cores other processes kept busy "
          "during it, steal: of them, cores the hypervisor took;\n"
          "base/peak: driver RSS MiB after imports / peak (workers excluded)")


def _by_round(runs, layout):
    """The results of the runs of ``layout`` (volume, workers, threads, backend), by round."""
    return {run.repeat: run.result for run in runs
            if (run.volume, run.n_workers, run.n_threads, run.backend) == layout
            and "failed" not in run.result}


def _stage_seconds(result):
    return sum(result["seconds"].values())


def _median_line(name, values, target):
    """``name``: each round's value, their median, the target and the median's verdict."""
    middle = statistics.median(values)
    print(f"{name}: median {middle:.2f} over {len(values)} round(s) "
          f"({', '.join(f'{v:.2f}' for v in values)})  target >= {target}  "
          f"{verdict(middle >= target)}")


def print_ratios(runs, backend):
    """Print the memory ratio and the parallel efficiency (per round) against their targets."""
    small = _by_round(runs, ("small", WORKERS_PARALLEL, 1, backend))[0]
    parallel = _by_round(runs, ("large", WORKERS_PARALLEL, 1, backend))
    serial = _by_round(runs, ("large", WORKERS_SERIAL, 1, backend))
    rounds = sorted(parallel.keys() & serial.keys())
    large = parallel[rounds[0]]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    growth = [r["peak_rss_mib"] - r["baseline_rss_mib"] for r in (small, large)]
    print(f"driver peak RSS large/small: {ratio:.2f}  target <= {MEMORY_RATIO_TARGET}  "
          f"{verdict(ratio <= MEMORY_RATIO_TARGET)}  (above the import baseline: "
          f"{growth[0]:.0f} vs {growth[1]:.0f} MiB)")
    _median_line("parallel efficiency t1/(2*t2) of hpc.run's stages, large",
                 [_stage_seconds(serial[k]) / (WORKERS_PARALLEL * _stage_seconds(parallel[k]))
                  for k in rounds], EFFICIENCY_TARGET)
    for k in rounds:
        t1, t2 = _stage_seconds(serial[k]), _stage_seconds(parallel[k])
        # every CPU-second the 2-worker run's stages spend (driver, workers) shares the same
        # cores, so they last stage_cpu / cores at least
        cpu = parallel[k]["cpu_seconds"] + parallel[k]["worker_cpu_seconds"]
        stage_cpu = parallel[k]["stage_cpu_seconds"]
        bound = t1 * os.cpu_count() / (WORKERS_PARALLEL * max(stage_cpu, EPSILON_SECONDS))
        free = os.cpu_count() - parallel[k]["other_cores"]
        w1, w2 = serial[k]["wall_seconds"], parallel[k]["wall_seconds"]
        print(f"  round {k}: {t1:.1f} s vs {t2:.1f} s; CPU of the 2-worker run {cpu:.1f} s "
              f"(driver {parallel[k]['cpu_seconds']:.1f}, workers "
              f"{parallel[k]['worker_cpu_seconds']:.1f} vs "
              f"{serial[k]['worker_cpu_seconds']:.1f} with 1 worker), in its stages "
              f"{stage_cpu:.1f} s (1 worker: {serial[k]['stage_cpu_seconds']:.1f} s): at best "
              f"{bound:.2f} on {os.cpu_count()} cores; {free:.1f} cores left by other "
              f"processes (steal "
              f"{parallel[k]['steal_cores']:.2f} / {serial[k]['steal_cores']:.2f}): at best "
              f"{free / WORKERS_PARALLEL:.2f}; from main()'s wall time (incl. cluster start) "
              f"{w1 / (WORKERS_PARALLEL * w2):.2f} ({w1:.1f} s vs {w2:.1f} s)")


def print_threads(runs):
    """Per backend: 1 worker x 2 threads against 2 workers x 1 thread on the large volume."""
    for backend in dict.fromkeys(r.backend for r in runs):
        threaded = _by_round(runs, ("large", WORKERS_SERIAL, THREADS_PARALLEL, backend))
        processes = _by_round(runs, ("large", WORKERS_PARALLEL, 1, backend))
        rounds = sorted(threaded.keys() & processes.keys())
        if not rounds:
            continue
        _median_line(
            f"{backend}: throughput 1 worker x {THREADS_PARALLEL} threads / {WORKERS_PARALLEL} "
            "workers x 1 thread, whole step",
            [_stage_seconds(processes[k]) / _stage_seconds(threaded[k]) for k in rounds],
            THREADS_TARGET)
        nms = [processes[k]["seconds"]["nms"] / threaded[k]["seconds"]["nms"] for k in rounds]
        print(f"  NMS stage alone: median {statistics.median(nms):.2f} "
              f"({', '.join(f'{v:.2f}' for v in nms)}); step seconds threaded / processes: "
              + ", ".join(f"{_stage_seconds(threaded[k]):.1f} / "
                          f"{_stage_seconds(processes[k]):.1f}" for k in rounds))


def parse_args(argv):
    """Command-line options (``--child`` is internal: it runs one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    triple = dict(type=int, nargs=3, metavar=("Z", "Y", "X"))
    parser.add_argument("--shape", default=DEFAULT_SHAPE, **triple,
                        help="small volume shape; the large one is 2x per axis")
    parser.add_argument("--nuclei", type=int, default=DEFAULT_NUCLEI,
                        help="nuclei in the small volume (the large one gets 8x)")
    parser.add_argument("--rays", type=int, default=DEFAULT_RAYS, help="rays per candidate")
    parser.add_argument("--candidates-per-nucleus", type=int, nargs=2, metavar=("LO", "HI"),
                        default=CANDIDATES_PER_NUCLEUS,
                        help="candidates per nucleus, an inclusive range")
    parser.add_argument("--tile-shape", default=DEFAULT_TILE_SHAPE, **triple,
                        help="nms.tile_shape of every run")
    parser.add_argument("--chunk-shape", default=DEFAULT_CHUNK_SHAPE, **triple,
                        help="labeling.chunk_shape of every run")
    parser.add_argument("--nms-backend", default=NmsSection().backend,
                        choices=(NMS_BACKEND_FAST, NMS_BACKEND_STARDIST),
                        help="nms.backend of every run (default: the config's)")
    parser.add_argument("--thread-backends", nargs="*",
                        default=(NMS_BACKEND_FAST, NMS_BACKEND_STARDIST),
                        choices=(NMS_BACKEND_FAST, NMS_BACKEND_STARDIST),
                        help="backends whose 1 worker x 2 threads run is compared with 2 "
                             "workers x 1 thread (default: both)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="rounds of the large file's runs; the ratios' medians over them "
                             f"are the verdicts (default {DEFAULT_REPEATS})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where candidate files, configs and logs go (default: a temp dir)")
    parser.add_argument("--child", nargs=4, metavar=("CONFIG", "N_WORKERS", "N_THREADS",
                                                     "BACKEND"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark (or, with ``--child``, one of its measurements) and print the report."""
    args = parse_args(argv)
    if args.child:
        return child_main(args.child[0], int(args.child[1]), int(args.child[2]),
                          args.child[3])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    load_before = os.getloadavg()
    workdir_context = (tempfile.TemporaryDirectory(prefix="hpc_step_") if args.workdir is None
                       else nullcontext(args.workdir))
    with workdir_context as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        runs = measure_all(Path(workdir).resolve(), args)
    load_after = os.getloadavg()
    print(f"HPC step benchmark: nms.backend {args.nms_backend}, {args.rays} rays, "
          f"{args.candidates_per_nucleus[0]}-{args.candidates_per_nucleus[1]} candidates per "
          f"nucleus, "
          f"tile {'x'.join(map(str, args.tile_shape))}, "
          f"chunk {'x'.join(map(str, args.chunk_shape))}, {args.nuclei} / "
          f"{args.nuclei * SCALE_PER_AXIS ** 3} nuclei, cluster.mode local")
    print(f"machine: {os.cpu_count()} cores (2 workers use all of them: the efficiency is "
          f"bounded by the driver's own work and anything else running); load average "
          f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print_table(runs)
    chosen = [run for run in runs[:3] if run.backend == args.nms_backend]
    if any("failed" in run.result for run in chosen):
        print("a run failed: no ratios (see the log above)")
        return 1
    print_ratios(runs, args.nms_backend)
    print_threads(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
