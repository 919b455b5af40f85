"""Cascade Mask R-CNN R50-FPN, 3x: Detectron2's `Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml`.

Reproduces: Mask R-CNN R50-FPN with `CascadeROIHeads`: three box stages (IoU 0.5 / 0.6 / 0.7,
box weights (10, 10, 5, 5) / (20, 20, 10, 10) / (30, 30, 15, 15), class-agnostic boxes), each
refining the previous stage's boxes; 2000 RPN proposals per image in training; 270k iterations
at 16 images/iter.
Detectron2 model zoo result (COCO 2017 val, 8 GPUs, 3x = 270k iterations): box AP 44.3, mask AP 38.5.

Commands (from the repository root):

    # train on COCO (paths to your local copy; nothing is downloaded)
    python train.py --config configs/cascade_mask_rcnn_R_50_FPN_3x.py \
        --config.data.train.json=coco/annotations/instances_train2017.json \
        --config.data.train.images=coco/train2017 \
        --config.data.test.json=coco/annotations/instances_val2017.json \
        --config.data.test.images=coco/val2017 --workdir work_dirs/cascade_mask_rcnn_R_50_FPN_3x

    # inference with Detectron2's own model-zoo weights
    python -m jax_rcnn.demo --config configs/cascade_mask_rcnn_R_50_FPN_3x.py \
        --weights model_final.pkl --input photo.jpg --output out.png

    # tiny variant used by the tests
    python train.py --config configs/cascade_mask_rcnn_R_50_FPN_3x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(mask_on=True, depth=50)
    common.cascade(config.model)
    common.schedule_3x(config)
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
