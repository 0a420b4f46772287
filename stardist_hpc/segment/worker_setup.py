"""Preloaded into every Dask worker process (local ones, and those of SLURM jobs through
``--preload``): Ctrl-C is the driver's to handle, threads hand the GIL over sooner, a worker
of several threads starts one task process per thread (:mod:`.task_processes`), and the NMS
kernels are loaded before the worker joins, in each process that runs tasks.

A Ctrl-C in the terminal reaches the whole foreground process group, so the local cluster's
worker processes would each print a KeyboardInterrupt traceback under the driver's one-line
message. The driver stops the cluster itself; the workers ignore SIGINT.

A numba kernel that releases the GIL takes it again for the convex hulls (SciPy's Qhull) of
each borderline pair it counted above the limit; while another thread of the worker runs
Python, that wait lasts up to Python's switch interval (5 ms by default), thousands of times
per task. A shorter interval keeps the threads of one worker busy (``benchmarks/hpc_step.py``,
1 worker x 2 threads).

Importing and loading the numba kernels from their on-disk cache takes each worker process
about 1.2 s of CPU. The preload waits for it before the worker joins the scheduler, so a
worker joins ready: loading them in a thread while the first tasks ran made every worker's
loading compete with the other workers' tasks for the job's cores, and the first task wait
for it anyway (numba compiles and loads under one lock). It waits at most
:data:`WARM_UP_WAIT_SECONDS`: on a fresh installation the kernels are compiled instead,
tens of seconds, and a SLURM worker that takes longer to start than dask-jobqueue's
``death-timeout`` (60 s by default) is stopped by its nanny; then the worker joins and the
compiling goes on in its thread.
"""
from __future__ import annotations

import json
import signal
import sys
import threading

import numpy as np

from . import task_processes

#: the warm-up candidates: three overlapping polyhedra of a few rays, enough to load the
#: kernels every NMS task runs (their types do not depend on the ray count).
WARM_UP_RAYS = 8
WARM_UP_POINTS = ((4, 4, 4), (4, 4, 6), (4, 6, 4))
WARM_UP_DIST = 3.0
WARM_UP_THRESH = 0.3


def warm_up_nms_kernels():
    """Run each NMS kernel of the fast backend once on tiny candidates."""
    from ..geometry.rays import ray_geometry
    from .nms_fast import meets_core, resuppress_counting_pairs, suppress_counting_pairs
    geometry = ray_geometry(json.dumps({"name": "Rays_GoldenSpiral",
                                        "kwargs": {"n": WARM_UP_RAYS, "anisotropy": None}}))
    points = np.array(WARM_UP_POINTS, np.int32)
    dist = np.full((len(points), WARM_UP_RAYS), WARM_UP_DIST, np.float32)
    everyone = np.ones(len(points), bool)
    kept, _ = suppress_counting_pairs(dist, points, geometry, WARM_UP_THRESH)
    resuppress_counting_pairs(dist, points, geometry, WARM_UP_THRESH, kept, everyone,
                              np.arange(len(points)) != 1)
    meets_core(dist, points, geometry, WARM_UP_THRESH, np.arange(len(points)) == 0)


#: Python's GIL switch interval in the workers (see above).
GIL_SWITCH_SECONDS = 0.0005
#: longest the preload waits for the NMS kernels before the worker joins (see above).
WARM_UP_WAIT_SECONDS = 10.0


def prepare_task_process():
    """What a task process runs as it starts: Ctrl-C is the driver's, the kernels loaded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up_nms_kernels()


def dask_setup(worker):
    """Dask's preload hook: runs in the worker's main thread before it takes tasks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    if worker.state.nthreads > 1:
        task_processes.start(worker.state.nthreads, prepare_task_process, WARM_UP_WAIT_SECONDS)
        return
    loading = threading.Thread(target=warm_up_nms_kernels, name="warm-up NMS kernels",
                               daemon=True)
    loading.start()
    loading.join(WARM_UP_WAIT_SECONDS)


def dask_teardown(worker):
    """Dask's preload hook as the worker closes."""
    task_processes.stop()
