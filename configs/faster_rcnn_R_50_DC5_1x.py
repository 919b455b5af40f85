"""Faster R-CNN R50-DC5, 1x: Detectron2's `COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml`.

Reproduces: Faster R-CNN, ResNet-50 with a dilated res5 (stride 16: stride 1, dilation 2 in its
3x3 convs), RPN and the 2fc box head on res5; 90k iterations at 16 images/iter.
Detectron2 model zoo result (COCO 2017 val, 8 GPUs, 1x = 90k iterations): box AP 37.3.
Detectron2 pads C4/DC5 inputs to no multiple (size_divisibility 0); `input.pad_mode =
"size_divisibility"` reproduces that, the default "buckets" pads into fixed shapes for speed
(docs/parity.md).

Commands (from the repository root):

    # train on COCO (paths to your local copy; nothing is downloaded)
    python train.py --config configs/faster_rcnn_R_50_DC5_1x.py \
        --config.data.train.json=coco/annotations/instances_train2017.json \
        --config.data.train.images=coco/train2017 \
        --config.data.test.json=coco/annotations/instances_val2017.json \
        --config.data.test.images=coco/val2017 --workdir work_dirs/faster_rcnn_R_50_DC5_1x

    # inference with Detectron2's own model-zoo weights
    python -m jax_rcnn.demo --config configs/faster_rcnn_R_50_DC5_1x.py --weights model_final.pkl \
        --input photo.jpg --output out.png

    # tiny variant used by the tests
    python train.py --config configs/faster_rcnn_R_50_DC5_1x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(mask_on=False, depth=50, layout="DC5")
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
