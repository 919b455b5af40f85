"""Keypoint R-CNN R50-FPN, 3x: Detectron2's `COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml`.

Reproduces: Faster R-CNN R50-FPN on one class (person) with the keypoint head
(`KRCNNConvDeconvUpsampleHead`: 8 x conv 3x3 512, deconv, bilinear x2 -> 17 x 56x56 heatmaps,
trained on foreground ROIs with a visible keypoint), box smooth-L1 beta 0.5, 1500 RPN proposals
per image in training; 270k iterations at 16 images/iter on `keypoints_coco_2017_train`.
Detectron2 model zoo result (COCO 2017 val, 8 GPUs, 3x = 270k iterations): box AP 55.4,
keypoint AP 65.5.

Commands (from the repository root):

    # inference with Detectron2's own model-zoo weights
    python -m jax_rcnn.demo --config configs/keypoint_rcnn_R_50_FPN_3x.py \
        --weights model_final.pkl --input photo.jpg --output out.png

    # tiny variant used by the tests (networks only: the keypoint data pipeline is not in
    # this config's smoke variant)
    python -c "from jax_rcnn.config import load_config; print(load_config('configs/keypoint_rcnn_R_50_FPN_3x.py:smoke'))"
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(depth=50)
    common.keypoint(config)
    config.data.name = "keypoints_coco_2017"
    common.schedule_3x(config)
    if arg == "smoke":
        common.smoke(config)
        config.model.roi_heads.num_classes = 1
        config.model.roi_keypoint_head.conv_dims = (16,) * 8
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
