"""Checkpoints in the work directory: small records, and the one resume policy.

A work directory belongs to one run: ``run.json`` records what its checkpoints depend on. A run
with the same signature resumes from them; a run whose input or settings changed starts afresh
(its checkpoints are removed, with a log line naming what changed).
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_bytes

log = logging.getLogger(__name__)

#: file in the work directory recording which run its checkpoints belong to.
SIGNATURE_FILE = "run.json"


def save_record(path, *records):
    """Save NamedTuples of arrays and scalars (distinct field names) to one ``.npz`` atomically."""
    fields = {name: value for record in records for name, value in record._asdict().items()}
    # assembled in memory, written at once: np.savez into the file itself seeks back over every
    # member's header (0.8 ms of the 2.7 ms a chunk's 20 arrays took, GIL held; same bytes)
    assembled = io.BytesIO()
    np.savez(assembled, **fields)
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(assembled.getbuffer())


def load_record(path, record_type):
    """Load the fields of ``record_type`` from a file written by :func:`save_record`.

    Zero-dimensional arrays are returned as Python scalars.
    """
    return load_records(path, record_type)[0]


def load_records(path, *record_types):
    """Load one record of each of ``record_types`` from one file written by
    :func:`save_record`, opening it once (each opening parses the zip directory again: ~1 ms
    per chunk checkpoint; a resumed chunk's extras, statistics and stored chunks are read
    together)."""
    with np.load(path, allow_pickle=False) as npz:
        return tuple(_record(record_type, npz) for record_type in record_types)


def _record(record_type, arrays):
    """``record_type`` from a mapping of arrays; zero-dimensional ones become Python scalars."""
    values = (arrays[name] for name in record_type._fields)
    return record_type(*(v.item() if v.ndim == 0 else v for v in values))


#: what reading a damaged, truncated or foreign ``.npz`` raises (zip CRCs are checked on read).
_DAMAGED_NPZ = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def load_checkpoint(path, record_type, identity):
    """The ``record_type`` of a checkpoint if it is intact and belongs where it lies, else None.

    Every member of the ``.npz`` is read, so zip's CRC checks every byte; ``identity`` (field
    -> value, e.g. the tile index and round) must match, so a file moved or swapped from
    elsewhere is not taken. A damaged or foreign checkpoint is logged, removed and reported as
    None: the caller recomputes it.
    """
    path = Path(path)
    try:
        # the file is opened here, not by np.load, so that a damaged one is closed as well
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as npz:
            members = {name: npz[name] for name in npz.files}
        record = _record(record_type, members)
        wrong = {k: getattr(record, k) for k, v in identity.items() if getattr(record, k) != v}
    except _DAMAGED_NPZ as e:
        wrong = {"content": " ".join(str(e).split())[:80]}
    if not wrong:
        return record
    log.warning("checkpoint %s is damaged or belongs elsewhere (%s): recomputing it", path,
                ", ".join(f"{k} {v}" for k, v in wrong.items()))
    path.unlink(missing_ok=True)
    return None


def changed_keys(previous: dict, current: dict, keys=None) -> list:
    """The keys (all of both, or only ``keys``) whose values differ, sorted."""
    keys = previous.keys() | current.keys() if keys is None else keys
    return sorted(k for k in keys if previous.get(k) != current.get(k))


def _previous_signature(path):
    """The signature in ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def resume_or_start_afresh(work_dir, signature, entries, *, complete=True):
    """Keep the checkpoints of ``work_dir`` if they belong to ``signature``, else remove them.

    Parameters
    ----------
    work_dir : Path
    signature : dict
        What the checkpoints depend on (input file, thresholds, tiling, ...), JSON-able.
    entries : sequence of str
        The checkpoint files and folders a run writes in ``work_dir``: only these are removed
        (the directory may hold other files of the user's).
    complete : bool
        False: ``signature`` holds only some keys (e.g. the input's identity, checked before
        the input is indexed); only those are compared and nothing is recorded.
    """
    work_dir = Path(work_dir)
    path = work_dir / SIGNATURE_FILE
    previous = _previous_signature(path)
    changed = (None if previous is None else
               changed_keys(previous, signature, None if complete else signature.keys()))
    if changed == []:
        return
    leftovers = [work_dir / name for name in (SIGNATURE_FILE, *entries)
                 if (work_dir / name).exists()]
    if leftovers:
        reason = f"{', '.join(changed)} changed" if changed else f"no readable {SIGNATURE_FILE}"
        log.warning("work_dir %s holds checkpoints of another run (%s): starting afresh",
                    work_dir, reason)
        for target in leftovers:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    if complete:
        write_bytes(path, json.dumps(signature, indent=1).encode())
