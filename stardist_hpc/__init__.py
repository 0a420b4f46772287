"""stardist-hpc: segment every nucleus of very large 3D volumes with StarDist3D.

Two steps, each a function here and a command-line script:

- :func:`predict_candidates` (``local_prediction.py``, GPU workstation): stream an image block
  by block through a StarDist3D model into a sparse candidate file.
- :func:`segment_candidates` (``hpc_prediction.py``, Dask/SLURM): exact tile-wise NMS and
  chunk-wise rendering of the candidates into one uint32 label volume.

:func:`open_candidates` and :func:`read_objects` read their outputs. Importing this package
imports neither TensorFlow nor Dask.
"""
from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("stardist-hpc")
except _metadata.PackageNotFoundError:   # a source tree that is not installed
    __version__ = "0+unknown"

from .errors import UserError  # noqa: E402

#: public name -> module that defines it, imported on first use (PEP 562), so that importing
#: the HPC step never imports the GPU step's module, and ``import stardist_hpc`` stays cheap.
_PUBLIC = {
    "predict_candidates": "stardist_hpc.predict.step",
    "segment_candidates": "stardist_hpc.segment.step",
    "open_candidates": "stardist_hpc.io.candidates",
    "read_objects": "stardist_hpc.io.label_file",
}

__all__ = [*_PUBLIC, "UserError", "__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'stardist_hpc' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(__all__)
