"""Train the two tiny StarDist3D models the tests use: a multi-class and a two-channel one.

Usage: ``python tests/models/make_tiny_models.py [--out tests/models]``

They are trained for a few steps only (a depth-1 U-Net with 4 base filters, 32 rays), so their
quality does not matter: the tests compare the block-wise pipeline with StarDist's own
``predict_instances`` on the same model. Their probability threshold is set so that StarDist
finds ``CANDIDATES`` candidates on :func:`sample_image`, the image the tests use.
Training takes a few seconds; the folders (config.json, thresholds.json, weights_best.h5, each
well under 1 MB) are committed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from csbdeep.utils import normalize

from stardist_hpc.synthetic import nuclei_volume

N_RAYS = 32
TRAIN_SHAPE = (24, 48, 48)
NUCLEI = 12
PATCH_SHAPE = (16, 32, 32)
EPOCHS, STEPS = 4, 30
LEARNING_RATE = 3e-3
#: classes of the multi-class model (StarDist numbers foreground classes 1..N_CLASSES)
N_CLASSES = 2
#: channels of the multi-channel model
N_CHANNELS = 2
#: candidates StarDist finds on the sample image at the threshold written to thresholds.json
CANDIDATES = 300
#: the tests' image: shape, nuclei and seed
SAMPLE_SHAPE, SAMPLE_NUCLEI, SAMPLE_SEED = (24, 64, 80), 10, 5
#: the synthetic image's intensities, scaled and offset to fill part of the uint16 range
INTENSITY_SCALE, INTENSITY_OFFSET = 1000, 200
#: intensity of the nuclei of class 1 (even labels), relative to the others
DIM = 0.5
#: StarDist's predict_sparse ignores candidates this many grid cells from the border
BORDER_CELLS = 2
NMS_THRESH = 0.3
PMIN, PMAX = 1.0, 99.8


def _config(**kwargs):
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D
    return Config3D(rays=Rays_GoldenSpiral(N_RAYS), grid=(1, 2, 2), unet_n_depth=1,
                    unet_n_filter_base=4, net_conv_after_unet=8, train_patch_size=PATCH_SHAPE,
                    train_batch_size=1, train_epochs=EPOCHS, train_steps_per_epoch=STEPS,
                    train_learning_rate=LEARNING_RATE, train_tensorboard=False,
                    train_reduce_lr=None, **kwargs)


def sample_image(channels=1, shape=SAMPLE_SHAPE, n_nuclei=SAMPLE_NUCLEI, seed=SAMPLE_SEED):
    """A uint16 synthetic nuclei image (z, y, x) or, with ``channels`` 2, (z, y, x, 2) whose
    second channel shows the same nuclei dimmer and inverted; and its labels. Nuclei of even
    label are dimmer (:func:`nucleus_class` 1), so that classes can be told apart."""
    image, labels = nuclei_volume(shape, n_nuclei, seed=seed)
    image = np.where((labels > 0) & (labels % 2 == 0), DIM * image, image)
    if channels > 1:
        image = np.stack([image, 1 - 0.5 * image], axis=-1)
    image = np.clip(image * INTENSITY_SCALE + INTENSITY_OFFSET, 0, None).astype(np.uint16)
    return image, labels.astype(np.int32)


def nucleus_class(label):
    """The class of a nucleus of the multi-class model: 1 (dim, even label) or 2 (bright)."""
    return 1 + int(label) % N_CLASSES


def _data(channels, seed):
    image, labels = sample_image(channels, TRAIN_SHAPE, NUCLEI, seed)
    return normalize(image, PMIN, PMAX, axis=(0, 1, 2)), labels


def _train(name, out, *, channels=1, n_classes=None):
    from stardist.models import StarDist3D
    x, y = _data(channels, seed=1)
    classes = None
    if n_classes:
        classes = [{int(i): nucleus_class(i) for i in np.unique(y) if i}]
    config = _config(n_channel_in=channels, n_classes=n_classes)
    model = StarDist3D(config, name=name, basedir=str(out))
    if classes:
        model.train([x], [y], classes=classes, validation_data=([x], [y], classes),
                    epochs=EPOCHS, steps_per_epoch=STEPS)
    else:
        model.train([x], [y], validation_data=([x], [y]), epochs=EPOCHS, steps_per_epoch=STEPS)
    prob = model.predict(normalize(sample_image(channels)[0], PMIN, PMAX, axis=(0, 1, 2)))[0]
    inside = np.sort(prob[(slice(BORDER_CELLS, -BORDER_CELLS),) * prob.ndim].ravel())
    thresholds = {"prob": float(inside[-CANDIDATES - 1]), "nms": NMS_THRESH}
    (out / name / "thresholds.json").write_text(json.dumps(thresholds))
    for extra in ("weights_last.h5", "weights_now.h5"):
        (out / name / extra).unlink(missing_ok=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out = parser.parse_args().out
    _train("multiclass", out, n_classes=N_CLASSES)
    _train("multichannel", out, channels=N_CHANNELS)


if __name__ == "__main__":
    main()
