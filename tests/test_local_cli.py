"""Bad input to local_prediction.py: one line naming the problem, exit code 2, no output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, config_text, *overrides):
    config = tmp_path / "cfg.yaml"
    config.write_text(config_text)
    args = [sys.executable, str(REPO / "local_prediction.py"), str(config)]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)


@pytest.fixture
def image_dir(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 16, 16), np.uint16))
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 8, 16, 16), np.uint16))
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((0, 16, 16), np.uint16))
    return tmp_path


MODEL = f"model: {{basedir: {REPO / 'models'}, name: demo}}\n"


@pytest.mark.parametrize("config_text, overrides, expected", [
    ("image: {path: missing.tif}\n" + MODEL, [], "missing.tif"),
    ("image: {path: two.tif, axes: CZYX, channel: 5}\n" + MODEL, [], "image.channel"),
    ("image: {path: two.tif, axes: QZYX}\n" + MODEL, [], "image.axes"),
    ("image: {path: two.tif}\n" + MODEL, [], "image.axes"),
    ("image: {path: img.tif}\nmodel: {basedir: nowhere, name: demo}\n", [], "model folder"),
    ("image: {path: img.tif}\n" + MODEL, ["prediction.blok_shape=[8,8,8]"], "block_shape"),
    ("image: {path: empty.tif}\n" + MODEL, [], "empty"),
    ("image: {path: img.tif}\n" + MODEL, ["prediction.block_shape=[0,8,8]"],
     "prediction.block_shape"),
])
def test_bad_input_is_one_line_and_exit_2(image_dir, config_text, overrides, expected):
    result = _run(image_dir, config_text, *overrides)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in errors[0]
    assert not (image_dir / "output").exists()
