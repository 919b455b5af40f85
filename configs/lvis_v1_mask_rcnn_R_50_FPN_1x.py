"""Mask R-CNN R50-FPN on LVIS v1, 1x: Detectron2's `LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml`.

Reproduces: Mask R-CNN R50-FPN with 1203 classes, Detectron2's LVIS recipe: the
`RepeatFactorTrainingSampler` (repeat threshold 0.001), training short side 640..800, 300
detections per image at score >= 0.0001, LVIS AP (APr / APc / APf) on `lvis_v1_val`; 180k
iterations at 16 images/iter (steps 120k, 160k; about 28.8 epochs of LVIS v1).
Detectron2's model zoo lists no number for this config (its LVIS table is v0.5's).

Commands (from the repository root; data under $DETECTRON2_DATASETS, Detectron2's layout:
`lvis/lvis_v1_{train,val}.json` and the COCO images in `coco/{train,val}2017`):

    python train.py --config configs/lvis_v1_mask_rcnn_R_50_FPN_1x.py --workdir work_dirs/lvis_v1

    # the federated loss (Detectron2's ROI_BOX_HEAD.USE_SIGMOID_CE / USE_FED_LOSS)
    python train.py --config configs/lvis_v1_mask_rcnn_R_50_FPN_1x.py:fed_loss --workdir w

    # tiny variant used by the tests
    python train.py --config configs/lvis_v1_mask_rcnn_R_50_FPN_1x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(mask_on=True, depth=50)
    common.lvis(config, version="v1")
    config.solver.steps = (120000, 160000)
    config.solver.max_iter = 180000
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
