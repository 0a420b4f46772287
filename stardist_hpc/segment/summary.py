"""What a run reports: its counts and seconds per stage, and how the NMS rounds went.

Plain records without the stages' imports, so that the QC report (:mod:`.report`) and the
Python API's callers can use them without loading the NMS (numba, SciPy).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass
class StageSeconds:
    """Wall-clock seconds spent in each stage."""
    index: float = 0.0
    nms: float = 0.0
    gather: float = 0.0
    labeling: float = 0.0
    write: float = 0.0
    report: float = 0.0    # what the QC report added after the outputs (it runs beside them)
    outputs: float = 0.0   # the OME-Zarr levels and the tables


class RunSummary(NamedTuple):
    """What a run did: counts, seconds per stage and the label file written."""
    n_candidates: int
    n_objects: int
    n_rounds: int
    n_reruns: int
    seconds: StageSeconds
    labels: Path
    #: NMS work of the first pass and of the reruns (``NmsWork``; empty if not run here)
    nms_work: tuple = ()


class NmsWork(NamedTuple):
    """NMS work: candidates decided, candidate pairs tested and seconds in the NMS kernel."""
    decided: int = 0
    pairs: int = 0
    seconds: float = 0.0

    def __add__(self, other):
        return NmsWork(*(a + b for a, b in zip(self, other)))


class NmsSummary(NamedTuple):
    """Where the final tile results are and how the rounds went."""
    versions: tuple       # round of the final result of each tile
    n_owned_kept: tuple   # survivors owned by each tile
    n_rounds: int
    n_reruns: int
    first_pass: NmsWork   # the NMS work of round 0
    reruns: NmsWork       # and of every later round
    batches: tuple        # the batch of each tile (tiles of a batch run in one task)
    tile_reruns: tuple    # rounds after the first in which each tile ran NMS again
    tile_seconds: tuple   # each tile's seconds in the NMS kernel over all rounds
