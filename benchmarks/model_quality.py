"""Quality of the bundled demo model on a synthetic volume it never saw, and on StarDist's crop.

Prints the matching scores at IoU 0.5 (precision, recall, F1; target F1 >= 0.9) of
``model.predict_instances`` against the ground truth of a fresh synthetic nuclei volume whose
seed differs from every training and validation volume of ``models/train_demo.py``; with
``--stardist-crop`` also against the mask of the small nuclei crop StarDist ships
(``stardist.data.test_image_nuclei_3d``), real-looking data the model was not trained on.

Run: ``.venv/bin/python benchmarks/model_quality.py [--model-basedir models] [--model-name demo]
[--stardist-crop]``
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from stardist_hpc.synthetic import nuclei_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (64, 192, 192)
N_NUCLEI = 250
#: a seed none of the training (0..70) or validation (1000..1010) volumes used
UNSEEN_SEED = 31337
MATCH_IOU = 0.5
TARGET_F1 = 0.9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-basedir", type=Path, default=REPO / "models")
    parser.add_argument("--model-name", default="demo")
    parser.add_argument("--stardist-crop", action="store_true",
                        help="also score stardist.data.test_image_nuclei_3d against its mask")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from csbdeep.utils import normalize
    from stardist.matching import matching
    from stardist.models import StarDist3D

    model = StarDist3D(None, name=args.model_name, basedir=str(args.model_basedir))
    image, truth = nuclei_volume(SHAPE, N_NUCLEI, seed=UNSEEN_SEED)
    labels, _ = model.predict_instances(normalize(image, 1, 99.8), show_tile_progress=False)
    stats = matching(truth, labels, thresh=MATCH_IOU)
    verdict = "PASS" if stats.f1 >= TARGET_F1 else "MISS"
    print(f"unseen synthetic volume {SHAPE}: {int(truth.max())} true nuclei, "
          f"{int(np.unique(labels).size - 1)} predicted")
    print(f"IoU {MATCH_IOU}: precision {stats.precision:.3f}  recall {stats.recall:.3f}  "
          f"F1 {stats.f1:.3f}  (target >= {TARGET_F1}: {verdict})")
    if args.stardist_crop:
        from stardist.data import test_image_nuclei_3d
        image, truth = test_image_nuclei_3d(return_mask=True)
        labels, _ = model.predict_instances(normalize(image, 1, 99.8),
                                            show_tile_progress=False)
        stats = matching(truth, labels, thresh=MATCH_IOU)
        print(f"StarDist's test_image_nuclei_3d {image.shape}: {len(np.unique(truth)) - 1} "
              f"masked nuclei, {len(np.unique(labels)) - 1} predicted; IoU {MATCH_IOU}: "
              f"precision {stats.precision:.3f}  recall {stats.recall:.3f}  F1 {stats.f1:.3f}")


if __name__ == "__main__":
    main()
