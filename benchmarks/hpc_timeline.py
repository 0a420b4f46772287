#!/usr/bin/env python
"""Where one HPC-step run spends its time: per stage and per task function, driver and workers.

A diagnostic beside ``hpc_step.py`` (which prints the ratios against their targets): it runs
``hpc_prediction.py``'s ``main`` once in this process, on a local cluster, and prints

* per stage: wall seconds, CPU seconds of the driver and of the worker processes, the tasks
  that ran in it, and per worker the seconds its tasks computed (Dask's task stream), how
  long after the stage's start its first task started (``lead``: a worker still importing,
  or the driver still planning) and how long before its end its last one ended (``tail``);
* per task function: tasks, wall seconds, the CPU seconds of the thread that ran them, and
  its voluntary / involuntary context switches (waiting for the GIL or I/O / preempted by
  another process on the same core), measured where they ran: in the worker, or in its task
  processes for a worker of several threads.

How to run
----------
::

    .venv/bin/python benchmarks/hpc_timeline.py              # hpc_step.py's large default set
    .venv/bin/python benchmarks/hpc_timeline.py --workers 1 --threads 2
    .venv/bin/python benchmarks/hpc_timeline.py --config my_hpc.yaml

Without ``--config`` it writes the large volume of ``hpc_step.py`` (64x512x512, 1,216 nuclei,
32 rays) and its config to ``--workdir`` (default: a temporary directory). Nothing else should
run on the machine: every figure is one run's.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import hpc_step

REPO = Path(__file__).resolve().parents[1]
#: Dask's task stream keeps the last this many tasks (the scheduler's default plugin is absent
#: on a local cluster without a dashboard page open).
TASK_STREAM_LENGTH = 100_000
#: seconds of slack when assigning a task to the stage whose interval holds it.
STAGE_SLACK = 1e-3


def _record_task_threads():
    """In a worker: wrap the task runner so each task records its thread's CPU and switches,
    measured where the task runs (the worker's thread, or a task process of the worker)."""
    from stardist_hpc.segment import cluster, task_processes
    cluster.thread_records = []

    def recording(function, *arguments):
        result, record = task_processes.run(_measuring, cluster._catching_bad_input, function,
                                            arguments)
        cluster.thread_records.append(record)
        return result
    # tasks name the runner by module and attribute: unpickled here, they get this one
    cluster._reporting_bad_input = recording


def _measuring(run, function, arguments):
    """``run(function, *arguments)`` and (name, wall, thread CPU, context switches) of it."""
    wall, cpu = time.perf_counter(), time.thread_time()
    before = resource.getrusage(resource.RUSAGE_THREAD)
    result = run(function, *arguments)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    return result, (function.__name__, time.perf_counter() - wall, time.thread_time() - cpu,
                    after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw)


def _thread_records():
    from stardist_hpc.segment import cluster
    return cluster.thread_records


class Timeline:
    """Stage intervals and CPU, the task stream and the workers' per-task records of a run."""

    def __init__(self):
        import psutil
        self._process = psutil.Process()
        self.stages, self.tasks, self.threads = [], [], []

    def _cpu(self):
        own = self._process.cpu_times()
        workers = [child.cpu_times() for child in self._process.children(recursive=True)]
        return own.user + own.system, sum(w.user + w.system for w in workers)

    def install(self, step):
        """Patch the step's stage timer and cluster so that this timeline records the run."""
        timed, start_cluster = step._timed, step.start_cluster

        @contextlib.contextmanager
        def recording_stage(seconds, stage):
            started, cpu = time.time(), self._cpu()
            with timed(seconds, stage):
                yield
            driver, workers = (b - a for a, b in zip(cpu, self._cpu()))
            self.stages.append((stage, started, time.time(), driver, workers))

        @contextlib.contextmanager
        def recording_cluster(section):
            from distributed.diagnostics.task_stream import TaskStreamPlugin
            with start_cluster(section) as client:
                client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.add_plugin(
                    TaskStreamPlugin(dask_scheduler, maxlen=TASK_STREAM_LENGTH)))
                client.run(_record_task_threads)
                started = time.time()
                yield client
                self.tasks = [(entry["worker"], part["start"], part["stop"])
                              for entry in client.get_task_stream(start=started)
                              for part in entry["startstops"] if part["action"] == "compute"]
                self.threads = [record for records in client.run(_thread_records).values()
                                for record in records]
        step._timed, step.start_cluster = recording_stage, recording_cluster

    def print(self):
        workers = sorted({worker for worker, _, _ in self.tasks})
        print(f"{'stage':<9}{'wall':>7}{'drvCPU':>8}{'wkCPU':>7}{'tasks':>6}  per worker: "
              "busy / lead / tail s")
        for stage, start, stop, driver, worker_cpu in self.stages:
            inside = [t for t in self.tasks
                      if t[1] >= start - STAGE_SLACK and t[2] <= stop + STAGE_SLACK]
            line = (f"{stage:<9}{stop - start:>7.2f}{driver:>8.2f}{worker_cpu:>7.2f}"
                    f"{len(inside):>6}")
            for worker in workers:
                mine = [(a, b) for w, a, b in inside if w == worker]
                if mine:
                    busy = sum(b - a for a, b in mine)
                    line += (f"  {busy:5.2f} / {min(a for a, _ in mine) - start:4.2f} / "
                             f"{stop - max(b for _, b in mine):4.2f}")
            print(line)
        totals = defaultdict(lambda: [0, 0.0, 0.0, 0, 0])
        for name, *values in self.threads:
            row = totals[name]
            row[0] += 1
            for i, value in enumerate(values, start=1):
                row[i] += value
        print(f"\n{'task function':<18}{'tasks':>6}{'wall':>8}{'thrCPU':>8}{'volCS':>8}"
              f"{'invCS':>7}")
        for name, (n, wall, cpu, voluntary, involuntary) in totals.items():
            print(f"{name:<18}{n:>6}{wall:>8.2f}{cpu:>8.2f}{voluntary:>8}{involuntary:>7}")
        print("drvCPU / wkCPU: CPU s of the driver (with the scheduler) / all worker processes "
              "in the stage (task processes included); thrCPU: CPU s of the threads that ran "
              "the tasks; volCS / invCS: "
              "their voluntary / involuntary context switches")


def _default_config(workdir):
    """The large volume of hpc_step.py and its config in ``workdir``; returns the config."""
    args = hpc_step.parse_args([])
    shape = tuple(hpc_step.SCALE_PER_AXIS * s for s in args.shape)
    candidates = workdir / "prediction.h5"
    hpc_step.write_candidates(candidates, shape, args.nuclei * hpc_step.SCALE_PER_AXIS ** 3,
                              args.rays, hpc_step.SEED + 1)
    run_dir = workdir / "run"
    run_dir.mkdir(exist_ok=True)
    config = workdir / "hpc.yaml"
    hpc_step.write_config(config, candidates, run_dir, args)
    return config


def main(argv=None):
    """Run the step once with the timeline installed and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="an hpc_prediction.py YAML (default: "
                                                    "hpc_step.py's large set)")
    parser.add_argument("--workers", type=int, default=2, help="local workers")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--workdir", type=Path, help="for the default set (default: a temp dir)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import hpc_prediction
    from stardist_hpc.segment import step
    with (tempfile.TemporaryDirectory(prefix="hpc_timeline_") if args.workdir is None
          else contextlib.nullcontext(args.workdir)) as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        config = args.config or _default_config(Path(workdir).resolve())
        timeline = Timeline()
        timeline.install(step)
        code = hpc_prediction.main([str(config), "--set",
                                    f"cluster.local.n_workers={args.workers}", "--set",
                                    f"cluster.local.threads_per_worker={args.threads}"])
    if code:
        return code
    print(f"{args.workers} worker(s) x {args.threads} thread(s), {config}")
    timeline.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
