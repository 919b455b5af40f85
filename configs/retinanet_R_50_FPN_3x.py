"""RetinaNet R50-FPN, 3x: Detectron2's `COCO-Detection/retinanet_R_50_FPN_3x.yaml`.

Reproduces: RetinaNet, ResNet-50 FPN p3-p7 (P6/P7 from C5), 4-conv class and box towers, focal
loss, 9 anchors per position, 270k iterations at 16 images/iter, base LR 0.01.
Detectron2 model zoo result (COCO 2017 val, 8 GPUs, 3x = 270k iterations): box AP 38.7.

Commands (from the repository root):

    # train on COCO (paths to your local copy; nothing is downloaded)
    python train.py --config configs/retinanet_R_50_FPN_3x.py \
        --config.data.train.json=coco/annotations/instances_train2017.json \
        --config.data.train.images=coco/train2017 \
        --config.data.test.json=coco/annotations/instances_val2017.json \
        --config.data.test.images=coco/val2017 --workdir work_dirs/retinanet_R_50_FPN_3x

    # inference with Detectron2's own model-zoo weights
    python -m jax_rcnn.demo --config configs/retinanet_R_50_FPN_3x.py --weights model_final.pkl \
        --input photo.jpg --output out.png

    # tiny variant used by the tests
    python train.py --config configs/retinanet_R_50_FPN_3x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(meta_architecture="RetinaNet", depth=50)
    common.schedule_3x(config)
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
