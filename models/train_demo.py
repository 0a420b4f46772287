"""Train the bundled demo StarDist3D model on synthetic nuclei.

Usage: ``python models/train_demo.py [--epochs N] [--steps N] [--out models]``

The model (96 rays, anisotropy-aware, a small U-Net) trains with the defaults (24 epochs of 40
steps, about 1 s a step, then two minutes of threshold optimisation) in 17 minutes on two CPU
cores (measured: 17 min 18 s wall, 174% CPU, 1809 CPU-seconds), and is committed as
``models/demo/`` (config.json, thresholds.json, weights_best.h5).
Its quality on unseen synthetic data is printed by ``benchmarks/model_quality.py``.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
from csbdeep.utils import normalize

from stardist_hpc.synthetic import DEFAULT_ANISOTROPY, nuclei_volume

log = logging.getLogger("train_demo")

N_RAYS = 96
TRAIN_SHAPE = (48, 128, 128)
NUCLEI_PER_VOLUME = 70
N_TRAIN, N_VAL = 8, 2
PATCH_SHAPE = (16, 64, 64)
LEARNING_RATE = 1e-3
EPOCHS, STEPS_PER_EPOCH = 24, 40
#: StarDist3D's default overlap threshold; optimising only the probability threshold for it
#: keeps threshold optimisation to about two minutes
NMS_THRESH = 0.3
#: halve the learning rate after this many epochs without improvement
REDUCE_LR_PATIENCE = 4
#: the normalisation percentiles of the default config (prediction.normalize)
PMIN, PMAX = 1.0, 99.8
VAL_SEED_OFFSET = 1000


def _volumes(n, seed0):
    """Training pairs, normalised exactly as local_prediction.py normalises (percentiles)."""
    pairs = [nuclei_volume(TRAIN_SHAPE, NUCLEI_PER_VOLUME, seed=seed0 + 10 * i) for i in range(n)]
    images = [normalize(image, PMIN, PMAX) for image, _ in pairs]
    return images, [labels.astype(np.int32) for _, labels in pairs]


def _config(epochs, steps):
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D

    grid = tuple(1 if a > 1.5 else 2 for a in DEFAULT_ANISOTROPY)
    return Config3D(
        rays=Rays_GoldenSpiral(N_RAYS, anisotropy=DEFAULT_ANISOTROPY),
        grid=grid, anisotropy=DEFAULT_ANISOTROPY, n_channel_in=1,
        unet_n_depth=2, unet_n_filter_base=16,
        train_patch_size=PATCH_SHAPE, train_batch_size=2, train_learning_rate=LEARNING_RATE,
        train_epochs=epochs, train_steps_per_epoch=steps,
        train_tensorboard=False,
        train_reduce_lr={"factor": 0.5, "patience": REDUCE_LR_PATIENCE, "min_delta": 0},
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--steps", type=int, default=STEPS_PER_EPOCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from stardist.models import StarDist3D

    x_train, y_train = _volumes(N_TRAIN, seed0=0)
    x_val, y_val = _volumes(N_VAL, seed0=VAL_SEED_OFFSET)
    model_dir = args.out / "demo"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model = StarDist3D(_config(args.epochs, args.steps), name="demo", basedir=str(args.out))
    model.train(x_train, y_train, validation_data=(x_val, y_val), augmenter=None)
    model.optimize_thresholds(x_val, y_val, nms_threshs=[NMS_THRESH])
    # only what inference needs is committed
    (model_dir / "weights_last.h5").unlink(missing_ok=True)
    shutil.rmtree(model_dir / "logs", ignore_errors=True)
    log.info("model written to %s with thresholds %s", model_dir, model.thresholds)


if __name__ == "__main__":
    main()
