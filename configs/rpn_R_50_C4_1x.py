"""RPN R50-C4, 1x: Detectron2's `COCO-Detection/rpn_R_50_C4_1x.yaml` (`ProposalNetwork`).

Reproduces: RPN-only proposal model on `Base-RCNN-C4.yaml`: ResNet-50 up to res4 (stride 16,
no FPN), one RPN head on res4 with 15 anchors per position (sizes 32-512 x ratios 0.5, 1, 2),
`PRE_NMS_TOPK_TEST` 12000 and `POST_NMS_TOPK_TEST` 2000 (train 12000 / 2000), 90k iterations
at 16 images/iter, base LR 0.02. Evaluated by Detectron2's COCO box-proposal recall
(`box_proposals/AR@100`, `AR@1000`, `ARs/ARm/ARl@...`).
Detectron2 model zoo result (COCO 2017 val, 8 GPUs, 1x = 90k iterations): prop. AR 51.6
(MODEL_ZOO.md does not name the limit; AR@1000 for the FPN twin's quick check).
Detectron2 pads C4 inputs to no multiple (size_divisibility 0); `input.pad_mode =
"size_divisibility"` reproduces that, the default "buckets" pads into fixed shapes for speed
(docs/parity.md).

Commands (from the repository root):

    # train on COCO (paths to your local copy; nothing is downloaded)
    python train.py --config configs/rpn_R_50_C4_1x.py \
        --config.data.train.json=coco/annotations/instances_train2017.json \
        --config.data.train.images=coco/train2017 \
        --config.data.test.json=coco/annotations/instances_val2017.json \
        --config.data.test.images=coco/val2017 --workdir work_dirs/rpn_R_50_C4_1x

    # proposals with Detectron2's own model-zoo weights (Predictor: proposal_boxes,
    # objectness_logits in original-image pixels)
    python train.py --config configs/rpn_R_50_C4_1x.py --eval_only \
        --config.model.weights=model_final_450694.pkl --workdir work_dirs/rpn_c4_eval

    # tiny variant used by the tests
    python train.py --config configs/rpn_R_50_C4_1x.py:smoke --workdir /tmp/smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives the tiny test variant."""
    config = common.base_config(meta_architecture="ProposalNetwork", depth=50, layout="C4")
    config.model.rpn.pre_nms_topk_test = 12000
    config.model.rpn.post_nms_topk_test = 2000
    if arg == "smoke":
        common.smoke(config)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
