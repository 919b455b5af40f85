"""Quickstart Panoptic FPN: the quickstart Mask R-CNN plus the semantic head, on the built-in
panoptic shapes (CPU).

Not a Detectron2 model-zoo config: `configs/quickstart.py`'s small Mask R-CNN (ResNet-18
res2..res4 with BN from scratch, FPN p2..p4 + p5 max-pool of width 64, anchors 8-64 px, p2-only
ROI pooling, 16 sampled masks per image) with Detectron2's `PanopticFPN` on top: `SemSegFPNHead`
on p2..p5 (GN, 64 channels; 5 classes: 0 = things, 1..4 = sky / grass / water / wall),
`loss_sem_seg` weight 0.5 (`Base-Panoptic-FPN.yaml`), and the combine step with Detectron2's
thresholds except `stuff_area_limit` 64 px (4096 px is for COCO-size images; these are 128 x
160). Data: `jax_rcnn.data.shapes` with `num_stuff_classes = 4` (the shapes on backgrounds of
2-3 textured stuff regions; instances JSON + semantic PNGs, the `panoptic_separated` layout,
plus COCO panoptic JSON + PNGs for PQ), generated on first use. Evaluation: box and mask AP,
PQ / SQ / RQ (all, things, stuff) and semantic mIoU / fwIoU / accuracies.

Commands (from the repository root):

    python train.py --config configs/quickstart_panoptic.py --workdir /tmp/quickstart_panoptic
    python train.py --config configs/quickstart_panoptic.py --workdir /tmp/quickstart_panoptic \
        --eval_only
    python train.py --config configs/quickstart_panoptic.py:smoke --workdir /tmp/qsp_smoke

Result (2026-12-07 20:59-21:10 UTC, quiet 2-core dev CPU, the dataset already cached; generating
it takes 13 s; `benchmarks/RESULTS.md`): the whole command took **10 min 20 s** (0.28-0.36 s per
iteration, 1800 iterations; evaluation 15 s). Panoptic shapes val, 200 images, seed 0: **PQ 48.3**
(SQ 75.2, RQ 52.3; things 24.1, stuff 96.7), sem_seg mIoU 95.8, bbox AP 29.8, segm AP 27.4.
(The first run, before two gradient fixes in `modeling/layers.py` and `semantic.py`, took
18 min 20 s at 0.53-0.57 s per iteration: PQ 45.1.)
"""

import ml_collections

from configs import common
from configs.quickstart import shapes_schedule


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives a few-iteration variant for tests."""
    config = common.base_config(meta_architecture="PanopticFPN", depth=18)
    m = config.model
    m.backbone.freeze_at = 0
    m.resnets.norm = "BN"
    m.resnets.stem_out_channels = 32
    m.resnets.res2_out_channels = 64  # Detectron2's rule for R18/R34
    m.fpn.out_channels = 64
    m.fpn.norm = "BN"
    m.roi_mask_head.norm = "BN"
    m.resnets.out_features = ("res2", "res3", "res4")
    m.fpn.in_features = ("res2", "res3", "res4")
    m.rpn.in_features = ("p2", "p3", "p4", "p5")
    m.anchor_generator.sizes = ((8,), (16,), (32,), (64,))
    m.roi_heads.in_features = ("p2",)
    m.rpn.pre_nms_topk_train = 512
    m.rpn.post_nms_topk_train = 256
    m.rpn.pre_nms_topk_test = 500
    m.rpn.post_nms_topk_test = 250
    m.roi_heads.num_classes = 8
    m.roi_heads.batch_size_per_image = 128
    m.roi_box_head.fc_dim = 256
    m.roi_mask_head.conv_dim = 32
    m.roi_mask_head.num_sampled_masks = 16
    m.roi_box_head.pooler_sampling_ratio = 2
    m.roi_mask_head.pooler_sampling_ratio = 2

    m.sem_seg_head.num_classes = 5
    m.sem_seg_head.convs_dim = 64
    m.panoptic_fpn.combine.stuff_area_limit = 64
    config.data.shapes.num_stuff_classes = 4

    config.input.gt_mask_size = 32
    shapes_schedule(config, base_lr=0.06, arg=arg)
    return common.finalize(config)
