"""A Dask worker preload for the crash tests: faults of dying workers, placed on one task.

Given to the HPC step's local cluster through Dask's own config
(``DASK_DISTRIBUTED__WORKER__PRELOAD``), so the product runs unchanged. In each worker it wraps
the labeling task ``render_chunks``; when the task of the batch holding chunk ``FAULT_CHUNK``
runs:

- ``FAULT=kill``: the worker process exits at once, as when the OOM killer stops it (every
  time the task runs, on whichever worker);
- ``FAULT=leave``: the worker and its nanny close, and so does every worker that runs a task
  after it (``FAULT_MARK`` is created), as when every job of a cluster ends.
"""
from __future__ import annotations

import os
from pathlib import Path

#: what the wrapper does, by the value of FAULT.
KILL, LEAVE = "kill", "leave"


def _leave(worker):
    """Close ``worker`` and its nanny (which then restarts no worker)."""
    worker.loop.add_callback(worker.close, nanny=True, reason="worker_faults: leaving")


def dask_setup(worker):
    """Dask's preload hook (in the worker process, before it takes tasks)."""
    import distributed

    from stardist_hpc.segment import render
    fault, chunk, mark = os.environ["FAULT"], int(os.environ["FAULT_CHUNK"]), \
        Path(os.environ["FAULT_MARK"])
    render_chunks = render.render_chunks

    def faulty_render_chunks(params, tasks, *arguments):
        faulty = any(task.index == chunk for task in tasks)
        if fault == KILL and faulty:
            os._exit(1)
        if fault == LEAVE and (faulty or mark.exists()):
            mark.touch()
            _leave(distributed.get_worker())
            return None   # never fetched: the worker is gone with its results
        return render_chunks(params, tasks, *arguments)
    # tasks name the function by module and name: unpickled here, they get this one
    render.render_chunks = faulty_render_chunks
