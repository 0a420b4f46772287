"""What the pipeline needs of a trained StarDist3D model, read from its JSON files only.

The HPC step must run on nodes without TensorFlow, so rays, grid and thresholds come from the
model folder's ``config.json`` and ``thresholds.json`` (weights are never read here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .candidate_checks import RAYS_ERRORS
from .hdf5 import open_hdf5

#: StarDist's fallback thresholds, used when a model folder has no thresholds.json.
DEFAULT_PROB_THRESH = 0.5
DEFAULT_NMS_THRESH = 0.4
#: weights files csbdeep loads from a model folder, preferring names that hold PREFERRED_WEIGHTS.
WEIGHTS_PATTERNS = ("*.h5", "*.hdf5")
PREFERRED_WEIGHTS = "best"
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
    n_classes: int = 0       # object classes of a multi-class model (0: single class)
    n_channel_in: int = 1    # image channels the network takes


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


def _threshold(thresholds, key, path):
    value = thresholds[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"model file {path}: '{key}': expected a number in [0, 1], got "
                        f"{value!r}")
    return float(value)


def _checked_rays(config, path):
    """``rays_json`` of config.json, checked to describe ``n_rays`` rays StarDist can read."""
    from stardist.rays3d import rays_from_json
    rays_json = config["rays_json"]
    try:
        n_rays = len(rays_from_json(rays_json).vertices)
    except RAYS_ERRORS as e:
        raise UserError(f"model file {path}: 'rays_json': expected StarDist's rays description, "
                        f"e.g. {{\"name\": \"Rays_GoldenSpiral\", \"kwargs\": {{...}}}}, got "
                        f"{json.dumps(rays_json)[:60]} ({e})") from None
    if n_rays != config["n_rays"]:
        raise UserError(f"model file {path}: 'n_rays': expected {n_rays} (the rays of "
                        f"'rays_json'), got {config['n_rays']!r}")
    return json.dumps(rays_json), n_rays


def _count(config, key, path, default):
    """The positive integer ``config[key]`` (``default`` when absent or null)."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"model file {path}: '{key}': expected a positive integer or null, got "
                        f"{value!r}")
    return value


def _thresholds(thresholds_path):
    """prob, nms and where they come from: thresholds.json, or StarDist's defaults when the
    file is missing."""
    if not thresholds_path.exists():
        return (DEFAULT_PROB_THRESH, DEFAULT_NMS_THRESH,
                f"StarDist's defaults ({thresholds_path} is missing)")
    thresholds = _require_keys(_read_json(thresholds_path), THRESHOLD_KEYS, thresholds_path)
    return (*(_threshold(thresholds, key, thresholds_path) for key in THRESHOLD_KEYS),
            str(thresholds_path))


def read_model_info(basedir, name):
    """Read rays, grid and thresholds of model ``basedir/name`` without TensorFlow.

    ``n_classes`` (multi-class models) and ``n_channel_in`` come from ``config.json`` too, so
    that a model the image cannot feed is refused before TensorFlow is imported.

    Raises
    ------
    UserError
        If the folder or its ``config.json`` is missing or incomplete, the model is not a
        3D StarDist model (e.g. a StarDist2D one), its rays are not StarDist's or disagree
        with ``n_rays``, a class or channel count is not a positive integer, or a threshold
        is not a number in [0, 1].
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
    rays_json, n_rays = _checked_rays(config, config_path)
    prob_thresh, nms_thresh, source = _thresholds(thresholds_path)
    return ModelInfo(name=name, rays_json=rays_json, n_rays=n_rays, grid=tuple(config["grid"]),
                     prob_thresh=prob_thresh, nms_thresh=nms_thresh, thresholds_source=source,
                     n_classes=_count(config, "n_classes", config_path, 0),
                     n_channel_in=_count(config, "n_channel_in", config_path, 1))


def model_weights(model_dir) -> Path:
    """The weights file StarDist loads from ``model_dir``, checked to be a readable HDF5 file.

    csbdeep loads the newest ``*.h5``/``*.hdf5`` file whose name holds ``best``, else the
    newest one; a folder without any would run an untrained network, so it is an error here.

    Raises
    ------
    UserError
        If the folder holds no weights file, or the one StarDist would load is unreadable.
    """
    model_dir = Path(model_dir)
    files = sorted((p for ext in WEIGHTS_PATTERNS for p in model_dir.glob(ext)),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    if not files:
        raise UserError(f"model folder {model_dir}: expected trained weights "
                        f"({', '.join(WEIGHTS_PATTERNS)}, e.g. weights_best.h5), got none; "
                        "without them the network would be untrained")
    weights = next((p for p in files if PREFERRED_WEIGHTS in p.name), files[0])
    with open_hdf5(weights, "model weights", "expected the weights StarDist saved in training"):
        return weights
