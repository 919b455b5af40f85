"""Semantic FPN R50, 1x: Detectron2's `Misc/semantic_R_50_FPN_1x.yaml` (`SemanticSegmentor`).

Reproduces: ResNet-50 FPN + `SemSegFPNHead` (54 classes, loss weight 1.0), short side 640-800 in
training, 90k iterations at 16 images/iter. Detectron2's weights (`semantic_R_50_FPN_1x/
111802073`) give mIoU 39.53, mACC 51.50 on `coco_2017_val_100_panoptic_stuffonly` (its
regression test); the model zoo lists no number.

Commands (from the repository root):

    # inference with Detectron2's weights: sem_seg (logits) and sem_seg_labels per image
    python -m jax_rcnn.demo --config configs/semantic_R_50_FPN_1x.py --weights model_final.pkl \
        --input photo.jpg --output out.png

    # tiny variant used by the tests (the panoptic shapes' semantic labels, mIoU evaluation)
    python train.py --config configs/semantic_R_50_FPN_1x.py:smoke --workdir /tmp/sem_smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(meta_architecture="SemanticSegmentor", depth=50)
    config.input.min_size_train = (640, 672, 704, 736, 768, 800)
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
