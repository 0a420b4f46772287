"""Task processes: a Dask worker with several threads runs each task in a process of its own.

Every task takes the GIL for part of its work: StarDist's C NMS all along, the fast NMS for
SciPy's convex hulls, h5py for every HDF5 call, the npz checkpoints and the numpy glue
between the numba kernels. Threads of one worker process wait for each other there (measured
with ``benchmarks/hpc_step.py``: one worker of 2 threads did 0.67-0.85 of the work of two
single-thread workers with the fast backend, ~0.5 with StarDist's). So a worker of ``n``
threads starts ``n`` task processes when it starts (its preload, :mod:`.worker_setup`), and
each of its threads hands its task to one of them and waits: whatever ``cores`` and
``processes`` a job is given, every core computes. A worker of one thread runs its tasks
itself.

A task process that dies (the OOM killer) breaks the pool; the worker then exits, so that
its nanny starts it again and the scheduler reruns its tasks, as for a killed worker process.
Task processes exit when their worker does, however it ends: each watches its parent.
Dask's per-worker memory limit (the nanny's) sees the worker process only; a SLURM job's own
memory limit covers all of them.
"""
from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time

import cloudpickle

log = logging.getLogger(__name__)

#: seconds between two looks of a task process at its parent.
PARENT_WATCH_SECONDS = 1.0
#: longest wait, as a worker closes, for its task processes to exit and be reaped (so that
#: their CPU time counts in the worker's); a busy one leaves once its parent has gone.
STOP_WAIT_SECONDS = 5.0
#: exit status of a worker whose task process died (the nanny restarts it).
BROKEN_POOL_EXIT_STATUS = 1

_pool: concurrent.futures.ProcessPoolExecutor | None = None


def start(n_processes, prepare, wait_seconds):
    """Start ``n_processes`` task processes in this (worker) process.

    Parameters
    ----------
    n_processes : int
        The worker's threads.
    prepare : callable
        Run in each task process as it starts (module-level: it is pickled).
    wait_seconds : float
        Longest wait for the processes to be prepared; the rest of their preparing goes on
        while the first tasks queue for them.
    """
    global _pool
    # A nanny starts its worker as a daemonic process, and multiprocessing refuses children
    # to those because they would be orphaned; these watch their parent and leave with it.
    multiprocessing.current_process().daemon = False
    # spawn, not fork: the worker already runs threads (its event loop) whose locks a fork
    # would copy held
    _pool = concurrent.futures.ProcessPoolExecutor(
        n_processes, mp_context=multiprocessing.get_context("spawn"),
        initializer=_prepare_task_process, initargs=(os.getpid(), prepare))
    # started now, from the worker's main thread, rather than by its first tasks
    concurrent.futures.wait([_pool.submit(os.getpid) for _ in range(n_processes)],
                            timeout=wait_seconds)


def stop():
    """Stop the task processes (a worker's teardown)."""
    global _pool
    if _pool is None:
        return
    _pool.shutdown(wait=False, cancel_futures=True)
    _pool = None
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))


def run(function, *arguments):
    """``function(*arguments)`` in a task process if this worker has them, else here."""
    if _pool is None:
        return function(*arguments)
    # cloudpickle both ways, as Dask sends tasks: a function or class defined in the driver's
    # script is not importable by name in the task process
    task = cloudpickle.dumps((function, arguments))
    try:
        return cloudpickle.loads(_pool.submit(_run_pickled, task).result())
    except concurrent.futures.process.BrokenProcessPool:
        log.error("a task process of this worker died (out of memory?): the worker exits, "
                  "its tasks run again")
        os._exit(BROKEN_POOL_EXIT_STATUS)


def _run_pickled(task):
    function, arguments = cloudpickle.loads(task)
    return cloudpickle.dumps(function(*arguments))


def _prepare_task_process(parent_pid, prepare):
    threading.Thread(target=_leave_with_parent, args=(parent_pid,), name="parent watch",
                     daemon=True).start()
    prepare()


def _leave_with_parent(parent_pid):
    """Exit once the parent is gone (a killed worker cannot stop its pool)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_WATCH_SECONDS)
    os._exit(0)
