"""Panoptic FPN R50, 1x: Detectron2's `COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml`.

Reproduces: Panoptic FPN = Mask R-CNN R50-FPN + `SemSegFPNHead` (54 semantic classes: 0 =
"things", 1..53 = COCO stuff; loss weight 0.5) + the combine step, 90k iterations at 16
images/iter.
Detectron2 model zoo result (COCO 2017 val, 8 GPUs): box AP 37.6, mask AP 34.7, PQ 39.4.

Commands (from the repository root):

    # inference with Detectron2's own model-zoo weights (instances, sem_seg, panoptic_seg)
    python -m jax_rcnn.demo --config configs/panoptic_fpn_R_50_1x.py --weights model_final.pkl \
        --input photo.jpg --output out.png

    # tiny variant used by the tests
    python -c "from jax_rcnn.config import load_config; load_config('configs/panoptic_fpn_R_50_1x.py:smoke')"

    # train on COCO's panoptic_separated layout under $DETECTRON2_DATASETS (instances json +
    # the semantic PNGs of Detectron2's datasets/prepare_panoptic_fpn.py; PQ from the panoptic
    # json + PNGs)
    python train.py --config configs/panoptic_fpn_R_50_1x.py \
        --config.data.train.name=coco_2017_train_panoptic_separated \
        --config.data.test.name=coco_2017_val_panoptic_separated \
        --workdir work_dirs/panoptic_fpn_R_50_1x
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(meta_architecture="PanopticFPN", depth=50)
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
