"""Run by test_crash_consistency in a child process, so that a native crash (SIGSEGV, abort)
shows as its return code: runs of the HPC step (tasks in process) whose disk fills up just
before a chosen write, with the free-space check before HDF5 writes turned off, so that the
write itself meets the full disk (as when a quota runs out during it).

Usage: ``full_disk_child.py MOUNT STEP TARGET CONFIG [STEP TARGET CONFIG ...]``; STEP is
``hpc`` (hpc_prediction.py on CONFIG) or ``candidates`` (the GPU step's writer, writing
test_crash_consistency's candidate file to the path CONFIG, without TensorFlow: the error it
raises is what local_prediction.py prints, exit code 2); MOUNT is filled to its last
byte when the TARGET write begins: ``dataset:<name>`` (HDF5 creates a dataset of that name)
or ``call:<module>:<function>`` (the first call of that function or ``Class.method``). The
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
from stardist_hpc.errors import EXIT_BAD_INPUT, UserError
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
    module_name, _, qualified_name = name.partition(":")
    owner = importlib.import_module(module_name)
    *owners, function_name = qualified_name.split(".")
    for attribute in owners:
        owner = getattr(owner, attribute)
    function = getattr(owner, function_name)

    def filling(*args, **kwargs):
        _fill(mount)
        return function(*args, **kwargs)
    patch.setattr(owner, function_name, filling)


def _write_candidates(path, errors):
    """Write the candidate file at ``path``; the exit code local_prediction.py would have."""
    from test_crash_consistency import _nuclei_file
    try:
        _nuclei_file(Path(path))
    except UserError as error:
        errors.messages.append(str(error))
        return EXIT_BAD_INPUT
    return 0


def main(mount, *runs):
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    for script, target, config in zip(runs[::3], runs[1::3], runs[2::3]):
        with pytest.MonkeyPatch.context() as patch:
            patch_tasks_in_process(patch)
            for module in (step, survivors, candidates):   # the write itself meets the disk
                patch.setattr(module, "check_free_space", lambda path, n_bytes: None)
            _filling_before(patch, target, mount)
            errors.messages.clear()
            code = segment_main([config]) if script == "hpc" else _write_candidates(config,
                                                                                    errors)
        (Path(mount) / "filler").unlink(missing_ok=True)
        print(json.dumps({"target": target, "code": code, "errors": errors.messages}),
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
