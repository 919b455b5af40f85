"""Mask R-CNN R50-DC5, 3x: Detectron2's `COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml`.

Reproduces: Mask R-CNN, ResNet-50 with a dilated res5 (stride 16: stride 1, dilation 2 in its
3x3 convs), RPN and the 2fc box head on res5, 4-conv mask head on res5 (28x28 masks); 270k
iterations at 16 images/iter.
Detectron2 model zoo result (COCO 2017 val, 8 GPUs, 3x = 270k iterations): box AP 40.0, mask AP 35.9.
Detectron2 pads C4/DC5 inputs to no multiple (size_divisibility 0); `input.pad_mode =
"size_divisibility"` reproduces that, the default "buckets" pads into fixed shapes for speed
(docs/parity.md).

Commands (from the repository root):

    # train on COCO (paths to your local copy; nothing is downloaded)
    python train.py --config configs/mask_rcnn_R_50_DC5_3x.py \
        --config.data.train.json=coco/annotations/instances_train2017.json \
        --config.data.train.images=coco/train2017 \
        --config.data.test.json=coco/annotations/instances_val2017.json \
        --config.data.test.images=coco/val2017 --workdir work_dirs/mask_rcnn_R_50_DC5_3x

    # inference with Detectron2's own model-zoo weights
    python -m jax_rcnn.demo --config configs/mask_rcnn_R_50_DC5_3x.py --weights model_final.pkl \
        --input photo.jpg --output out.png

    # tiny variant used by the tests
    python train.py --config configs/mask_rcnn_R_50_DC5_3x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(mask_on=True, depth=50, layout="DC5")
    common.schedule_3x(config)
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
