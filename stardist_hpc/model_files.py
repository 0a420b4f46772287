"""What the pipeline needs of a trained StarDist3D model, read from its JSON files only.

The HPC step must run on nodes without TensorFlow, so rays, grid and thresholds come from the
model folder's ``config.json`` and ``thresholds.json`` (weights are never read here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

#: StarDist's fallback thresholds, used when a model folder has no thresholds.json.
DEFAULT_PROB_THRESH = 0.5
DEFAULT_NMS_THRESH = 0.4


@dataclass(frozen=True)
class ModelInfo:
    """Geometry and thresholds of a StarDist3D model."""
    name: str
    rays_json: str       # JSON of StarDist's rays description (``rays_from_json`` input)
    n_rays: int
    grid: tuple
    prob_thresh: float
    nms_thresh: float


def _read_json(path, what):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {path} is not readable JSON: {e}") from None


def read_model_info(basedir, name):
    """Read rays, grid and thresholds of model ``basedir/name`` without TensorFlow.

    Raises
    ------
    UserError
        If the folder or its ``config.json`` is missing or the model is not a 3D StarDist model.
    """
    model_dir = Path(basedir) / name
    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir} does not exist (check model.basedir and "
                        "model.name)")
    config = _read_json(model_dir / "config.json", "model config")
    if config.get("n_dim") != 3 or "rays_json" not in config:
        raise UserError(f"model {model_dir}: expected a StarDist3D model (n_dim 3 with rays), "
                        f"got n_dim {config.get('n_dim')!r}")
    thresholds_path = model_dir / "thresholds.json"
    thresholds = (_read_json(thresholds_path, "model thresholds") if thresholds_path.exists()
                  else {"prob": DEFAULT_PROB_THRESH, "nms": DEFAULT_NMS_THRESH})
    return ModelInfo(name=name, rays_json=json.dumps(config["rays_json"]),
                     n_rays=int(config["n_rays"]), grid=tuple(config["grid"]),
                     prob_thresh=float(thresholds["prob"]), nms_thresh=float(thresholds["nms"]))
