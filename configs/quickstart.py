"""Quickstart: a small Mask R-CNN trained from scratch on the built-in `shapes` dataset (CPU).

Not a Detectron2 model-zoo config: the Mask R-CNN R50-FPN architecture of
`mask_rcnn_R_50_FPN_1x.py` shrunk to train in about ten minutes on a 2-core CPU, on
`jax_rcnn.data.shapes` (8 classes of shapes on textured backgrounds, 128 x 160 images,
generated on first use under `~/.cache/jax_rcnn`).

Changes from `Base-RCNN-FPN.yaml`, all for small images and training from scratch:
* ResNet-50 layout with narrow stages (stem 16, res2 64 ... res5 512 channels), trainable BN
  everywhere (`freeze_at = 0`, no ImageNet weights), FPN width 64;
* anchors 8..128 px on p2..p6 (the shapes are 8 to 64 px);
* 4 images per batch, base LR 0.01, 400 iterations, 50 warm-up, LR x0.1 at 300 and 370;
* fewer proposals and ROIs (one image holds at most 12 instances).

Expected result (shapes val, 200 images): box AP ~TBD, mask AP ~TBD after `max_iter` iterations
(fill in from the run's `metrics.jsonl`; the
schedule was sized from a measured ~4 s/iteration at 8 images on a loaded 2-core CPU and
still needs one timed full run).

Commands (from the repository root):

    python train.py --config configs/quickstart.py --workdir /tmp/quickstart
    tensorboard --logdir /tmp/quickstart/tb           # losses, lr, AP
    python train.py --config configs/quickstart.py --workdir /tmp/quickstart --eval_only
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the quickstart config; `arg="smoke"` gives a few-iteration variant for tests."""
    config = common.base_config(mask_on=True, depth=50)
    m = config.model
    m.backbone.freeze_at = 0
    m.resnets.norm = "BN"
    m.resnets.stem_out_channels = 16
    m.resnets.res2_out_channels = 64
    m.resnets.width_per_group = 16
    m.fpn.out_channels = 64
    m.anchor_generator.sizes = ((8,), (16,), (32,), (64,), (128,))
    m.rpn.pre_nms_topk_train = 512
    m.rpn.post_nms_topk_train = 256
    m.rpn.pre_nms_topk_test = 500
    m.rpn.post_nms_topk_test = 250
    m.roi_heads.num_classes = 8
    m.roi_heads.batch_size_per_image = 64
    m.roi_box_head.fc_dim = 256
    m.roi_mask_head.conv_dim = 64

    i = config.input
    i.min_size_train = (128,)
    i.max_size_train = 160
    i.min_size_test = 128
    i.max_size_test = 160
    i.buckets = ((128, 160), (160, 128))
    i.max_gt = 16
    i.gt_mask_size = 32

    config.data.source = "shapes"
    config.data.name = "shapes"
    config.dataloader.num_workers = 0

    s = config.solver
    s.ims_per_batch = 4
    s.base_lr = 0.01
    s.max_iter = 400
    s.steps = (300, 370)
    s.warmup_iters = 50
    s.checkpoint_period = 200
    config.test.eval_period = 400
    config.test.detections_per_image = 50
    config.test.ims_per_batch = 8
    config.log_period = 20

    if arg == "smoke":
        s.max_iter = 4
        s.steps = (3,)
        s.warmup_iters = 2
        s.checkpoint_period = 2
        config.test.eval_period = 4
        config.data.shapes.num_train = 16
        config.data.shapes.num_val = 8
        config.log_period = 1
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
