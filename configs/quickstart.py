"""Quickstart: a small Mask R-CNN trained from scratch on the built-in `shapes` dataset (CPU).

Not a Detectron2 model-zoo config: the Mask R-CNN FPN architecture of
`mask_rcnn_R_50_FPN_1x.py` (ResNet + FPN p2-p6, RPN, ROIAlignV2 box and mask heads) shrunk for
`jax_rcnn.data.shapes` (8 classes of shapes on textured backgrounds, 128 x 160 images, 1000 train
/ 200 val, generated on first use under `~/.cache/jax_rcnn`, ~10 s).

Changes from `Base-RCNN-FPN.yaml`, all for small images and training from scratch:
* ResNet-18 stages res2..res4 only (basic blocks, stem 32, 64/128/256 channels; res5 held 8.4M
  of R18's 11.2M parameters, and its 4 x 5 map adds little for 8-64 px shapes), trainable BN
  everywhere (`freeze_at = 0`, no ImageNet weights); FPN p2..p4 + p5 (max-pool) of width 64
  with BN; mask head 4 x 32 channels with BN; box head 2 x fc 256;
* anchors 8, 16, 32, 64 px on p2..p5 (the shapes are 8 to 64 px);
* box and mask ROIs pooled from p2 only: Detectron2's level assignment (224 px at p4) sends
  every box under 112 px to p2 anyway, so this only skips the per-level gathers;
* ROIAlign with a fixed 2 x 2 sampling grid (`pooler_sampling_ratio = 2`);
* 4 images per batch, base LR 0.06 (BN everywhere), 1800 iterations, 100 warm-up, LR x0.1 at
  1440 and 1665;
* fewer proposals and ROIs (512/256 proposals, 128 ROIs per image; at most 12 instances);
* the mask head trains on 16 random foreground ROIs per image
  (`roi_mask_head.num_sampled_masks`, a jax_rcnn option; Detectron2 uses all of them, up to 32
  here): each image's mean mask loss is estimated without bias (images with more than 16
  weigh less in the batch mean), for ~25 % less time per step once the RPN finds the shapes (0.46 -> 0.35 s), spent on 200 more iterations.

What moved AP most (`benchmarks/RESULTS.md`): LR 0.02 -> 0.04 (1000 iterations: bbox 18.0 ->
24.3, mask 11.6 -> 18.9), 64 -> 128 ROIs per image (33.0 / 27.6), LR 0.04 -> 0.06 (1600
iterations, seed 0: 47.6 / 43.8 -> 54.2 / 51.3), then 16 sampled masks with 1800 iterations.

Measured on the 2-core AMD EPYC dev CPU, quiet (2026-11-22, `benchmarks/RESULTS.md`): ~0.33 s
per iteration at the start, 0.34-0.39 s once the RPN finds the shapes; the whole `train.py`
command took 11 min 21 s - 12 min 15 s with the dataset already generated (start-up ~14 s,
compile ~20 s, final evaluation ~15 s). Shapes val, 200 images, after 1800 iterations:

    bbox AP 55.7 (AP50 74.8)     segm AP 53.0 (AP50 73.5)      (seed 0, the default)
    bbox AP 55.1 (AP50 74.9)     segm AP 52.8 (AP50 73.3)      (--config.seed=1)
    bbox AP 55.6 (AP50 74.5)     segm AP 53.0 (AP50 73.4)      (--config.seed=2)

AP is still rising at the end (the schedule is limited by CPU time, not converged); longer
schedules (`--config.solver.max_iter=... --config.solver.steps=...`) give more.

Commands (from the repository root):

    pip install -e . && python train.py --config configs/quickstart.py --workdir /tmp/quickstart
    tensorboard --logdir /tmp/quickstart/tb           # losses, lr, AP
    python train.py --config configs/quickstart.py --workdir /tmp/quickstart --eval_only
    python train.py --config configs/quickstart.py:smoke --workdir /tmp/qs_smoke   # 4 steps

`:cascade` (`:cascade_smoke`) swaps the ROI heads for Cascade R-CNN's (`CascadeROIHeads`, 3
stages at IoU 0.5 / 0.6 / 0.7, class-agnostic boxes; `configs.common.cascade`) and changes
nothing else (the same 256 training proposals, seed and schedule), for the side-by-side with the
plain head:

    python train.py --config configs/quickstart.py:cascade --workdir /tmp/quickstart_cascade

Research recipes (`RECIPES`, `docs/research.md`): `:giou`, `:soft_nms`, `:ohem`, `:libra`
(`:<name>_smoke` for a few steps) swap one piece through `jax_rcnn.research` and change nothing
else:

    python train.py --config configs/quickstart.py:ohem --workdir /tmp/quickstart_ohem
"""

import ml_collections

from configs import common

# Research recipes (`docs/research.md`): each swaps one piece through `jax_rcnn.research` and
# changes nothing else (same seed, schedule and data), for a same-budget ablation against the
# plain quickstart. `:<name>_smoke` is the same recipe with the smoke schedule.
RECIPES = {
    # GIoU on the decoded boxes in the box head, weight 10 (MMDetection's
    # `faster_rcnn_r50_fpn_giou_1x`; GIoU is ~10x smaller than the 10/10/5/5-weighted L1).
    "giou": {
        "model.roi_box_head.bbox_reg_loss_type": "giou",
        "model.roi_box_head.bbox_reg_loss_weight": 10.0,
    },
    # Gaussian Soft-NMS (sigma 0.5) instead of per-class NMS at test time; training unchanged.
    "soft_nms": {"model.roi_heads.test_nms": "soft_nms_gaussian"},
    # OHEM: the ROI batch is the hardest candidates by box-head loss (same fg/bg counts).
    "ohem": {"model.roi_heads.sampler": "ohem"},
    # Libra R-CNN's IoU-balanced negative sampling.
    "libra": {"model.roi_heads.sampler": "iou_balanced"},
}


def apply_recipe(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets each dotted key of `overrides` (all must exist in `config`)."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the quickstart config; `arg="smoke"` gives a few-iteration variant for tests,
    `"cascade"` / `"cascade_smoke"` the same with Cascade R-CNN's ROI heads, and a `RECIPES`
    name (`"giou"`, `"soft_nms"`, `"ohem"`, `"libra"`, each also `"<name>_smoke"`) a research
    recipe."""
    recipe = None
    if arg and arg.removesuffix("_smoke") in RECIPES:
        recipe = RECIPES[arg.removesuffix("_smoke")]
        arg = "smoke" if arg.endswith("_smoke") else None
    cascade = arg in ("cascade", "cascade_smoke")
    if cascade:
        arg = "smoke" if arg == "cascade_smoke" else None
    config = common.base_config(mask_on=True, depth=18)
    m = config.model
    m.backbone.freeze_at = 0
    m.resnets.norm = "BN"
    m.resnets.stem_out_channels = 32
    m.resnets.res2_out_channels = 64  # Detectron2's rule for R18/R34
    m.fpn.out_channels = 64
    # From scratch, normalisation everywhere trains much faster (Detectron2's scratch recipes
    # use GN in FPN and heads; BN is cheaper here and batch statistics over 4 images and
    # 64 ROIs are stable enough).
    m.fpn.norm = "BN"
    m.roi_mask_head.norm = "BN"
    # res2..res4 only (res5 held 8.4M of R18's 11.2M parameters; its 4 x 5 map adds little for
    # 8-64 px shapes): FPN p2..p4 + p5 (max-pool) for the RPN, one anchor size per level.
    m.resnets.out_features = ("res2", "res3", "res4")
    m.fpn.in_features = ("res2", "res3", "res4")
    m.rpn.in_features = ("p2", "p3", "p4", "p5")
    m.anchor_generator.sizes = ((8,), (16,), (32,), (64,))
    # Detectron2's level assignment (canonical 224 px at p4) sends every box under 112 px to
    # p2, so pooling from p2 alone gives the same features without the per-level gathers.
    m.roi_heads.in_features = ("p2",)
    m.rpn.pre_nms_topk_train = 512
    m.rpn.post_nms_topk_train = 256
    m.rpn.pre_nms_topk_test = 500
    m.rpn.post_nms_topk_test = 250
    m.roi_heads.num_classes = 8
    m.roi_heads.batch_size_per_image = 128
    m.roi_box_head.fc_dim = 256
    m.roi_mask_head.conv_dim = 32
    # Mask head on 16 random foreground ROIs per image instead of all (up to 32): ~25 % off the
    # trained-regime step (0.46 -> 0.35 s), spent on 200 more iterations.
    m.roi_mask_head.num_sampled_masks = 16
    # Fixed 2x2 samples per bin (a Detectron2 option): a static ROIAlign loop of 4 steps instead
    # of up to 16 for the adaptive grid.
    m.roi_box_head.pooler_sampling_ratio = 2
    m.roi_mask_head.pooler_sampling_ratio = 2

    if cascade:
        post_nms_topk_train = m.rpn.post_nms_topk_train
        common.cascade(m)
        m.rpn.post_nms_topk_train = post_nms_topk_train  # only the ROI heads change

    config.input.gt_mask_size = 32
    shapes_schedule(config, base_lr=0.06, arg=arg)
    if recipe:
        apply_recipe(config, recipe)
    return common.finalize(config)


def shapes_schedule(config: ml_collections.ConfigDict, *, base_lr: float, arg: str | None) -> None:
    """The built-in dataset at 128 x 160, batch 4, 1800 iterations (x0.1 at 1440 and 1665), one
    evaluation at the end; `arg="smoke"`: 4 iterations on 16 images. Shared by the quickstarts."""
    i = config.input
    i.min_size_train = (128,)
    i.max_size_train = 160
    i.min_size_test = 128
    i.max_size_test = 160
    i.buckets = ((128, 160), (160, 128))
    i.max_gt = 16

    config.data.source = "shapes"
    config.data.name = "shapes"
    config.dataloader.num_workers = 0

    s = config.solver
    s.ims_per_batch = 4
    s.base_lr = base_lr
    s.max_iter = 1800
    s.steps = (1440, 1665)
    s.warmup_iters = 100
    s.checkpoint_period = 500
    config.test.eval_period = s.max_iter  # one COCO evaluation (and picture) at the end
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
        raise ValueError(
            f"unknown config variant {arg!r} (known: 'smoke'; quickstart.py also 'cascade', "
            f"'cascade_smoke' and the recipes {tuple(RECIPES)} (+ '_smoke'); "
            "quickstart_retinanet.py also 'atss', 'atss_smoke', 'atss_a1')"
        )
