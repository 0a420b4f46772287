"""Shared fixtures: the bundled demo model and small synthetic volumes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from stardist_hpc.config import ImageSection, ModelSection
from stardist_hpc.synthetic import nuclei_volume

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def demo_model_section():
    """Config section naming the committed demo model."""
    return ModelSection(basedir=MODELS, name="demo")


@pytest.fixture(scope="session")
def demo_model(demo_model_section):
    """The committed demo StarDist3D model, loaded once per test session (imports TensorFlow)."""
    from stardist_hpc.predict import load_model
    return load_model(demo_model_section)


@pytest.fixture(scope="session")
def small_nuclei():
    """A small synthetic nuclei image (float32) and its ground truth, shape not block-aligned."""
    return nuclei_volume((37, 91, 117), 45, seed=7)


@pytest.fixture
def small_nuclei_tif(tmp_path, small_nuclei):
    """``small_nuclei`` written as a float32 TIFF; returns its ImageSection."""
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, small_nuclei[0].astype(np.float32))
    return ImageSection(path=path, dataset=None, channel=0, axes=None)
