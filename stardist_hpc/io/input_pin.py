"""Inputs pinned for the whole run: a candidate file that changes under a run stops it.

The HPC step's tasks reopen the candidate file by name, hours after start-up and on other
nodes. Rerunning the GPU step renames a new ``prediction.h5`` over the old one, and a task that
read the new file would mix two predictions into one label volume. The driver records the
file's identity at start-up (:func:`pin`); every task checks it when it opens the file
(:func:`read_pinned_box`, :func:`check_pinned`) and the run stops with one line.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError
from .candidates import CandidateFile


class InputPin(NamedTuple):
    """What identifies a candidate file: size, modification time and index fingerprint."""
    path: str
    size: int
    mtime_ns: int
    #: SHA-256 of the attributes (sealed by the file's ``header_sha256``) and the block index
    fingerprint: str


def _stat(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def fingerprint(candidates: CandidateFile) -> str:
    """SHA-256 of a candidate file's attributes and its block index (read at open)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(candidates.meta), sort_keys=True,
                                       default=str).encode())
    digest.update(candidates.blocks.tobytes())
    return digest.hexdigest()


def pin(candidates: CandidateFile) -> InputPin:
    """The identity of an open candidate file, to be checked by every task."""
    size, mtime_ns = _stat(candidates.path)
    return InputPin(str(candidates.path), size, mtime_ns, fingerprint(candidates))


def _changed(path, what):
    return UserError(f"input {path} changed while this run was using it ({what} differ from "
                     "start-up; was the GPU step rerun?): nothing was written; rerun once the "
                     "file is final to start afresh on it")


def check_unchanged(path, size, mtime_ns):
    """Refuse an input file whose size or modification time is no longer the given ones."""
    if _stat(path) != (size, mtime_ns):
        raise _changed(path, "size or modification time")


def check_pinned(pinned: InputPin):
    """Refuse a candidate file whose size or modification time is no longer the pinned ones."""
    check_unchanged(pinned.path, pinned.size, pinned.mtime_ns)


def verify_pinned(pinned: InputPin) -> CandidateFile:
    """Open the pinned candidate file afresh, checking its size, modification time and
    fingerprint (the header and block index read again): the last look before an output
    appears at its final path."""
    check_pinned(pinned)
    candidates = CandidateFile(Path(pinned.path))
    if fingerprint(candidates) != pinned.fingerprint:
        raise _changed(pinned.path, "attributes or block index")
    return candidates


#: pinned files whose header and index this process has read and checked. A cache: tasks reopen
#: the file many times, and reading and checking them again costs milliseconds of held GIL
#: per task that a worker's other threads wait for.
_verified = functools.lru_cache(maxsize=4)(verify_pinned)


def open_pinned(pinned: InputPin) -> CandidateFile:
    """Open the pinned candidate file, checking its size and modification time (and, the first
    time in this process, its fingerprint)."""
    check_pinned(pinned)
    return _verified(pinned)


def read_pinned_box(pinned: InputPin, lo, hi):
    """``CandidateFile.read_box(lo, hi)`` of the pinned file, checked before and after.

    The file is opened by name twice (index, then rows): the second look at its size and
    modification time catches a file replaced in between.
    """
    box = open_pinned(pinned).read_box(lo, hi)
    check_pinned(pinned)
    return box
