"""Mask R-CNN R50-FPN on LVIS v0.5, 1x: Detectron2's `LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml`.

Reproduces: Mask R-CNN R50-FPN with 1230 classes, Detectron2's LVIS recipe: the
`RepeatFactorTrainingSampler` (repeat threshold 0.001: images of rare categories repeated,
LVIS paper appendix B.2), training short side 640..800, 300 detections per image at score
>= 0.0001, LVIS AP (APr / APc / APf) on `lvis_v0.5_val`; 90k iterations at 16 images/iter
(about 24 epochs of LVIS v0.5).
Detectron2 model zoo result (LVIS v0.5 val, 8 GPUs): box AP 23.6, mask AP 24.4.

Commands (from the repository root; data under $DETECTRON2_DATASETS, Detectron2's layout:
`lvis/lvis_v0.5_{train,val}.json` and the COCO images in `coco/{train,val}2017`):

    python train.py --config configs/lvis_v0_5_mask_rcnn_R_50_FPN_1x.py --workdir work_dirs/lvis

    # tiny variant used by the tests
    python train.py --config configs/lvis_v0_5_mask_rcnn_R_50_FPN_1x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(mask_on=True, depth=50)
    common.lvis(config, version="v0.5")
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
