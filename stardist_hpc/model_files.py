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
#: keys of config.json and thresholds.json that the pipeline reads.
CONFIG_KEYS = ("n_rays", "grid", "rays_json")
THRESHOLD_KEYS = ("prob", "nms")


@dataclass(frozen=True)
class ModelInfo:
    """Geometry and thresholds of a StarDist3D model."""
    name: str
    rays_json: str       # JSON of StarDist's rays description (``rays_from_json`` input)
    n_rays: int
    grid: tuple
    prob_thresh: float
    nms_thresh: float
    thresholds_source: str = "thresholds.json"   # or StarDist's defaults (file missing)


def _read_json(path):
    """The JSON object in the model file ``path``."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"model folder {path.parent}: expected a StarDist model folder with "
                        f"{path.name}, got none (check model.basedir and model.name)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"model file {path}: expected readable JSON, got "
                        + " ".join(str(e).split())) from None
    if not isinstance(content, dict):
        raise UserError(f"model file {path}: expected a JSON object, got {type(content).__name__}")
    return content


def _require_keys(content, keys, path):
    """Check that the JSON object read from ``path`` holds ``keys``."""
    missing = [k for k in keys if k not in content]
    if missing:
        raise UserError(f"model file {path}: expected the keys {', '.join(keys)}, got no "
                        f"{', '.join(missing)}")
    return content


def read_model_info(basedir, name):
    """Read rays, grid and thresholds of model ``basedir/name`` without TensorFlow.

    Raises
    ------
    UserError
        If the folder or its ``config.json`` is missing or incomplete, or the model is not a
        3D StarDist model.
    """
    model_dir = Path(basedir) / name
    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir} does not exist (check model.basedir and "
                        "model.name)")
    config_path, thresholds_path = model_dir / "config.json", model_dir / "thresholds.json"
    config = _read_json(config_path)
    if config.get("n_dim") != 3:
        raise UserError(f"model {model_dir}: expected a StarDist3D model (n_dim 3 in "
                        f"config.json), got n_dim {config.get('n_dim')!r}")
    _require_keys(config, CONFIG_KEYS, config_path)
    if thresholds_path.exists():
        thresholds = _require_keys(_read_json(thresholds_path), THRESHOLD_KEYS, thresholds_path)
        source = str(thresholds_path)
    else:
        thresholds, source = ({"prob": DEFAULT_PROB_THRESH, "nms": DEFAULT_NMS_THRESH},
                              f"StarDist's defaults ({thresholds_path} is missing)")
    return ModelInfo(name=name, rays_json=json.dumps(config["rays_json"]),
                     n_rays=int(config["n_rays"]), grid=tuple(config["grid"]),
                     prob_thresh=float(thresholds["prob"]), nms_thresh=float(thresholds["nms"]),
                     thresholds_source=source)
