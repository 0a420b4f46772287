"""Run by test_crash_consistency in a child process, so that a native crash (SIGSEGV, abort)
shows as its return code: runs of the HPC step (tasks in process) whose disk fills up just
before a chosen write, with the free-space check before HDF5 writes turned off, so that the
write itself meets the full disk (as when a quota runs out during it).

Usage: ``full_disk_child.py MOUNT TARGET CONFIG [TARGET CONFIG ...]``; MOUNT is filled to
its last byte when the TARGET write begins: ``dataset:<name>`` (HDF5 creates a dataset of
that name) or ``call:<module>:<function>`` (that function is called; the first call). The
filler is removed after each run. Prints one JSON line per run: its exit code and the
messages it logged at ERROR level.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
from pathlib import Path

import h5py
import pytest
from conftest import patch_tasks_in_process

from stardist_hpc.cli import segment_main
from stardist_hpc.io import candidates, survivors
from stardist_hpc.segment import step


class _Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _fill(mount):
    """Fill ``mount`` to its last byte (a file ``filler``)."""
    with contextlib.suppress(OSError), open(Path(mount) / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def _filling_before(patch, target, mount):
    """Fill ``mount`` when the ``target`` write begins (see the module docstring)."""
    kind, _, name = target.partition(":")
    if kind == "dataset":
        create_dataset = h5py.Group.create_dataset

        def filling_create_dataset(group, dataset_name, *args, **kwargs):
            if dataset_name == name:
                _fill(mount)
            return create_dataset(group, dataset_name, *args, **kwargs)
        patch.setattr(h5py.Group, "create_dataset", filling_create_dataset)
        return
    module_name, _, function_name = name.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, function_name)

    def filling(*args, **kwargs):
        _fill(mount)
        return function(*args, **kwargs)
    patch.setattr(module, function_name, filling)


def main(mount, *targets_and_configs):
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    for target, config in zip(targets_and_configs[::2], targets_and_configs[1::2]):
        with pytest.MonkeyPatch.context() as patch:
            patch_tasks_in_process(patch)
            for module in (step, survivors, candidates):   # the write itself meets the disk
                patch.setattr(module, "check_free_space", lambda path, n_bytes: None)
            _filling_before(patch, target, mount)
            errors.messages.clear()
            code = segment_main([config])
        (Path(mount) / "filler").unlink(missing_ok=True)
        print(json.dumps({"target": target, "code": code, "errors": errors.messages}),
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
