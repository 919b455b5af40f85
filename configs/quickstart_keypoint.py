"""Quickstart keypoints: a small Keypoint R-CNN trained from scratch on the built-in `people`
dataset (CPU).

Not a Detectron2 model-zoo config: the Keypoint R-CNN FPN architecture of
`keypoint_rcnn_R_50_FPN_1x.py` (ResNet + FPN, RPN, ROIAlignV2 box head, `KRCNNConvDeconvUpsampleHead`
on 14x14 pools -> 17 x 56x56 heatmaps) shrunk for `jax_rcnn.data.people` (stick figures with
COCO's 17 person keypoints, flip map and skeleton on textured backgrounds, 128 x 160 images,
1000 train / 200 val, generated on first use under `~/.cache/jax_rcnn`, a few seconds).

Changes from `Base-Keypoint-RCNN-FPN.yaml`, all for small images and training from scratch,
following `configs/quickstart.py` (whose notes say why):
* ResNet-18 res2..res4, stem 32, trainable BN everywhere (`freeze_at = 0`, no ImageNet
  weights); FPN p2..p4 + p5 (max-pool), width 64, BN; box head 2 x fc 256;
* anchors 16, 32, 64, 128 px on p2..p5 (figures are 40 to 120 px tall);
* box and keypoint ROIs pooled from p2 only; box ROIAlign with a fixed 2 x 2 sampling grid;
* keypoint head `conv_dims` 4 x 32 (Detectron2: 8 x 512; the head runs on up to 4 x 32
  foreground ROIs per batch), the rest as Detectron2 (14x14 pool, 56x56 heatmaps, loss
  normalised by the visible keypoints, flip augmentation with COCO's flip map);
* 4 images per batch, base LR 0.06, 1500 iterations, 100 warm-up, LR x0.1 at 1200 and 1400;
  512/256 proposals, 128 ROIs per image, at most 8 instances.

Result (2026-12-07 20:47-20:58 UTC, quiet 2-core dev CPU, `people` already cached; generating it
takes a few seconds; `benchmarks/RESULTS.md`): the whole command took **10 min 39 s** (train
step compiled in 22 s, 0.38-0.45 s per iteration, evaluation of the 200 val images 8 s).
People val, seed 0: **keypoint AP 56.1** (AP50 82.4, AP75 59.8), person box AP 60.3.
`loss_keypoint` 8.2 (start) -> 4.57 (iteration 300) -> 3.43 (600) -> 2.95 (900) -> 3.08 (1200)
-> 2.76 (1500). (Before the two conv-gradient fixes in `modeling/layers.py`, the same recipe ran
1.3-1.4 s per iteration, ~35 minutes.)

Commands (from the repository root):

    python train.py --config configs/quickstart_keypoint.py --workdir /tmp/quickstart_kp
    python train.py --config configs/quickstart_keypoint.py --workdir /tmp/quickstart_kp --eval_only
    python train.py --config configs/quickstart_keypoint.py:smoke --workdir /tmp/qskp_smoke
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives a few-iteration variant for tests."""
    config = common.base_config(depth=18)
    common.keypoint(config)
    common.people_data(config)
    m = config.model
    m.backbone.freeze_at = 0
    m.resnets.norm = "BN"
    m.resnets.stem_out_channels = 32
    m.resnets.res2_out_channels = 64  # Detectron2's rule for R18/R34
    m.resnets.out_features = ("res2", "res3", "res4")
    m.fpn.in_features = ("res2", "res3", "res4")
    m.fpn.out_channels = 64
    m.fpn.norm = "BN"
    m.rpn.in_features = ("p2", "p3", "p4", "p5")
    m.anchor_generator.sizes = ((16,), (32,), (64,), (128,))
    m.roi_heads.in_features = ("p2",)
    m.rpn.pre_nms_topk_train = 512
    m.rpn.post_nms_topk_train = 256
    m.rpn.pre_nms_topk_test = 500
    m.rpn.post_nms_topk_test = 250
    m.roi_heads.batch_size_per_image = 128
    m.roi_box_head.fc_dim = 256
    m.roi_box_head.pooler_sampling_ratio = 2
    m.roi_keypoint_head.conv_dims = (32,) * 4

    i = config.input
    i.min_size_train = (128,)
    i.max_size_train = 160
    i.min_size_test = 128
    i.max_size_test = 160
    i.buckets = ((128, 160), (160, 128))
    i.max_gt = 8
    config.dataloader.num_workers = 0

    s = config.solver
    s.ims_per_batch = 4
    s.base_lr = 0.06
    s.max_iter = 1500
    s.steps = (1200, 1400)
    s.warmup_iters = 100
    s.checkpoint_period = 500
    config.test.eval_period = s.max_iter  # one COCO evaluation (and picture) at the end
    config.test.detections_per_image = 20
    config.test.ims_per_batch = 8
    config.log_period = 20
    if arg == "smoke":
        s.max_iter = 4
        s.steps = (3,)
        s.warmup_iters = 2
        s.checkpoint_period = 2
        config.test.eval_period = 4
        config.data.people.num_train = 16
        config.data.people.num_val = 8
        config.log_period = 1
    elif arg:
        raise ValueError(f"unknown config variant {arg!r} (known: 'smoke')")
    return common.finalize(config)
