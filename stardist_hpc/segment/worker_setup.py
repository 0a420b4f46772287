"""Preloaded into every local Dask worker process: Ctrl-C is the driver's to handle.

A Ctrl-C in the terminal reaches the whole foreground process group, so the local cluster's
worker processes would each print a KeyboardInterrupt traceback under the driver's one-line
message. The driver stops the cluster itself; the workers ignore SIGINT.
"""
from __future__ import annotations

import signal


def dask_setup(worker):
    """Dask's preload hook: runs in the worker's main thread before it takes tasks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
