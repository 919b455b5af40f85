"""Quickstart C4: a small C4 Mask R-CNN trained from scratch on the built-in `shapes` dataset.

Not a Detectron2 model-zoo config: the C4 Mask R-CNN of `mask_rcnn_R_50_C4_1x.py` (plain ResNet
up to res4 at stride 16, no FPN; RPN on res4 with every anchor size on the one map;
`Res5ROIHeads`: 14 x 14 ROIAlignV2 pools from res4, res5 as the head, its spatial mean to the box
predictor, deconv mask head on the res5 output giving 14 x 14 masks) shrunk like
`configs/quickstart.py` for `jax_rcnn.data.shapes` (8 classes of shapes on textured
backgrounds, 128 x 160 images, 1000 train / 200 val, generated on first use).

Changes from `Base-RCNN-C4.yaml`, all for small images, training from scratch and CPU time:
* ResNet-50 layout made narrow: stem 32, res2..res4 outputs 64/128/256 with bottlenecks 8/16/32
  (`width_per_group = 8`), and the res5 head 256 -> 512 with a bottleneck of 64 (Detectron2's
  `Res5ROIHeads` always builds bottleneck blocks, which jax_rcnn allows for R50 and deeper only,
  hence R50 rather than the FPN quickstart's R18). Trainable BN everywhere (`freeze_at = 0`, no
  ImageNet weights; the res5 head takes `resnets.norm` as in Detectron2). The res5 head runs on
  every sampled ROI and every test proposal, so its width sets the step time: a first try with a
  bottleneck of 128 and 64 ROIs per image ran at 2.9 s/iteration on the loaded dev CPU;
* anchors 8, 16, 32, 64 px x ratios (0.5, 1, 2) on res4 (12 per position; the shapes are 8 to
  64 px);
* ROIAlign with a fixed 2 x 2 sampling grid (`pooler_sampling_ratio = 2`); the 14 x 14 pool,
  7 x 7 res5 output and 14 x 14 masks stay Detectron2's;
* 4 images per batch, base LR 0.06 (BN everywhere), the quickstarts' schedule
  (`quickstart.shapes_schedule`: 1800 iterations, 100 warm-up, LR x0.1 at 1440 and 1665);
* fewer proposals and ROIs: 512/256 proposals in training, 500/250 at test, 32 ROIs per image;
  at most 16 instances, 50 detections per image.

Padding: the shapes images are all 128 x 160 (or its transpose), so the quickstart buckets are
the images' own sizes and Detectron2's exact C4 padding (size_divisibility 0) adds nothing.

Measured once (2026-12-07, seed 0) on the 2-core dev CPU while other engineers' jobs and this
branch's tests ran (load average 5-9, so every time below is inflated; not re-measured quiet):
the whole `train.py` command took 38 min 29 s (start-up and compile 2 min 40 s, 1800 iterations
35 min 49 s at 0.8-2.3 s/iteration, final evaluation 80 s). Shapes val, 200 images:

    bbox AP 3.95 (AP50 9.04, APs 4.66, APm 7.19)     segm AP 3.03 (AP50 7.17)

Far below the FPN quickstart (54 / 51 in 1800 iterations; no AP target here). Likely reasons,
not yet tested: one stride-16 map for 8-64 px shapes (an 8 px shape spans half a res4 cell,
anchors step 16 px), the narrow bottlenecks, and 32 ROIs per image; `loss_cls` was still 0.73
at the end. The losses fell slowly throughout (total 2.16 at 200 iterations, 1.79 at 1800).

Commands (from the repository root):

    python train.py --config configs/quickstart_c4.py --workdir /tmp/quickstart_c4
    python train.py --config configs/quickstart_c4.py:smoke --workdir /tmp/qsc4_smoke  # 4 steps
"""

import ml_collections

from configs import common, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives a few-iteration variant for tests."""
    config = common.base_config(mask_on=True, depth=50, layout="C4")
    m = config.model
    m.backbone.freeze_at = 0
    m.resnets.norm = "BN"
    m.resnets.stem_out_channels = 32
    m.resnets.res2_out_channels = 64
    # Bottlenecks 8/16/32 in res2..res4 and 64 in the res5 head: the head runs on every sampled
    # ROI, so its width sets the step time (64 x 8 = 512 would be ~10x the FLOPs per ROI).
    m.resnets.width_per_group = 8
    m.anchor_generator.sizes = ((8, 16, 32, 64),)
    m.rpn.pre_nms_topk_train = 512
    m.rpn.post_nms_topk_train = 256
    m.rpn.pre_nms_topk_test = 500
    m.rpn.post_nms_topk_test = 250
    m.roi_heads.num_classes = 8
    m.roi_heads.batch_size_per_image = 32
    m.roi_box_head.pooler_sampling_ratio = 2

    config.input.gt_mask_size = 32
    quickstart.shapes_schedule(config, base_lr=0.06, arg=arg)
    return common.finalize(config)
