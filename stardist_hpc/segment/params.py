"""The one resolved parameter record of the HPC step, shared by the driver and every task."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io.input_pin import InputPin
from .measure import MeasureSpec

#: the original-format input converted into this project's format, inside work_dir.
INDEXED_INPUT = "prediction_indexed.h5"
SURVIVORS = "survivors.h5"
NMS_DIR = "nms"
CHUNK_DIR = "chunks"
#: markers of the OME-Zarr chunks written (see stardist_hpc.io.ome_zarr).
OME_ZARR_DIR = "ome_zarr"
#: checkpoints that depend on the run's settings.
SETTING_CHECKPOINTS = (NMS_DIR, SURVIVORS, CHUNK_DIR, OME_ZARR_DIR)
#: every checkpoint file and folder a run writes in work_dir; the indexed copy of an
#: original-format input depends only on the input file and the model folder.
CHECKPOINTS = (INDEXED_INPUT, *SETTING_CHECKPOINTS)
#: batching tasks (neighbouring NMS tiles, label chunks) stops before a stage would have fewer
#: tasks than this, to keep the workers of a small run busy.
MIN_TASKS = 16
#: fields that say where files are, not what the checkpoints hold.
_LOCATIONS = ("candidate_pin", "work_dir", "label_path", "ome_zarr_path", "objects_tsv",
              "objects_parquet")


@dataclass(frozen=True)
class SegmentParams:
    """Every setting of one HPC-step run, resolved from the arguments and the candidate file.

    Attributes
    ----------
    candidate_pin : InputPin
        The candidate file the tasks read (the indexed copy for an original-format input), with
        its identity at start-up, which every task checks.
    input_path : str
        The candidate file as given, and its ``input_size`` and ``input_mtime_ns``.
    model_dir : str
        The model folder whose rays and thresholds were used ('' for the file's own).
    image_shape, rays_json, prob_thresh, n_classes : from the candidate file (``n_classes``
        > 0: a multi-class model's candidates, whose class probabilities reach label.h5).
    nms_thresh, nms_backend, tile_shape, halo : NMS settings (``halo`` resolved to voxels).
    chunk_shape, labeling_backend : rendering settings (``chunk_shape`` clipped to the image).
    work_dir, label_path : where checkpoints and the label file go.
    measure : what the labeling tasks measure (None: nothing; see :mod:`.measure`).
    storage_shape : storage chunk of label.h5 and the OME-Zarr (None: ``chunk_shape``).
    voxel_size, voxel_unit : physical size of a voxel (z, y, x), from the candidate file.
    ome_zarr_path, objects_tsv, objects_parquet : the other outputs (None: not written).
    """
    candidate_pin: InputPin
    input_path: str
    input_size: int
    input_mtime_ns: int
    model_dir: str
    image_shape: tuple
    rays_json: str
    prob_thresh: float
    nms_thresh: float
    nms_backend: str
    tile_shape: tuple
    halo: tuple
    chunk_shape: tuple
    labeling_backend: str
    work_dir: Path
    label_path: Path
    n_classes: int = 0
    measure: MeasureSpec | None = None
    storage_shape: tuple | None = None
    voxel_size: tuple = (1.0, 1.0, 1.0)
    voxel_unit: str = "pixel"
    ome_zarr_path: Path | None = None
    objects_tsv: Path | None = None
    objects_parquet: Path | None = None

    @property
    def candidate_path(self) -> Path:
        return Path(self.candidate_pin.path)

    @property
    def nms_dir(self) -> Path:
        return self.work_dir / NMS_DIR

    @property
    def chunk_dir(self) -> Path:
        return self.work_dir / CHUNK_DIR

    @property
    def storage_chunks(self) -> tuple:
        """The storage chunk shape of the label outputs."""
        return self.chunk_shape if self.storage_shape is None else self.storage_shape

    @property
    def ome_zarr_marker_dir(self) -> Path:
        return self.work_dir / OME_ZARR_DIR

    @property
    def survivor_path(self) -> Path:
        return self.work_dir / SURVIVORS

    def signature(self) -> dict:
        """What the checkpoints in ``work_dir`` depend on: every field but the locations."""
        fields = {k: v for k, v in asdict(self).items() if k not in _LOCATIONS}
        return json.loads(json.dumps(fields, default=str))   # tuples as lists, as JSON reads
