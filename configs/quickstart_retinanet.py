"""Quickstart RetinaNet: a small RetinaNet trained from scratch on the built-in `shapes` dataset.

Not a Detectron2 model-zoo config: the RetinaNet of `retinanet_R_50_FPN_1x.py` (ResNet + FPN,
shared 4-conv class and box towers, focal loss, 9 anchors per position, per-level top-k
decoding) shrunk like `configs/quickstart.py` for `jax_rcnn.data.shapes` (8 classes of shapes on
textured backgrounds, 128 x 160 images, 1000 train / 200 val, generated on first use).

Changes from `Base-RetinaNet.yaml`, all for small images and training from scratch:
* ResNet-18 stages res2..res4, trainable BN everywhere (`freeze_at = 0`), FPN of width 64 with
  BN on res2..res4 and the max-pool top block (`build_resnet_fpn_backbone`: p2..p5), because
  the shapes are 8 to 64 px: the head reads p2..p5 (strides 4-32) instead of p3..p7 (8-128);
* anchors x * 2^(0, 1/3, 2/3) for x = 8, 16, 32, 64 on p2..p5, ratios (0.5, 1, 2);
* head towers of 64 channels (the FPN width), 4 convs each, as in Detectron2, with GroupNorm
  (`MODEL.RETINANET.NORM: GN`);
* focal loss gamma 1.0 and alpha 0.5 (`MODEL.RETINANET.FOCAL_LOSS_GAMMA` / `_ALPHA`; Detectron2's
  defaults are 2.0 / 0.25): from scratch in 1800 iterations the classifier underfits (it boxes
  the shapes well but confuses their classes), and a weaker down-weighting of easy anchors
  trains it faster: bbox AP 27.6 -> 32.8 at 1800 iterations (gamma 0 diverges), 45.9 at 2700;
* 4 images per batch, base LR 0.04 (BN everywhere), 2700 iterations (1.5x the two-stage
  quickstarts'), 100 warm-up, LR x0.1 at 2160 and 2500; at most 12 instances, 50 detections
  per image. Measured on the quiet 2-core CPU: bbox AP 45.9 (AP50 64.6, AP75 54.0), whole
  command 13 min 39 s from an empty cache (dataset generation and every compile included;
  benchmarks/RESULTS.md).

Commands (from the repository root):

    python train.py --config configs/quickstart_retinanet.py --workdir /tmp/quickstart_retinanet
    python train.py --config configs/quickstart_retinanet.py:smoke --workdir /tmp/qsr_smoke
"""

import ml_collections

from configs import common, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg="smoke"` gives a few-iteration variant for tests; `"atss"`
    (`"atss_smoke"`) the research recipe with ATSS anchor assignment (`docs/research.md`);
    `"atss_a1"` ATSS with one square anchor per position (the ATSS paper's setting: with 9
    anchors per position the 9 closest anchors of a level all sit at one position)."""
    atss = arg in ("atss", "atss_smoke", "atss_a1")
    one_anchor = arg == "atss_a1"
    if atss:
        arg = "smoke" if arg == "atss_smoke" else None
    config = common.base_config(meta_architecture="RetinaNet", depth=18)
    m = config.model
    m.backbone.name = "build_resnet_fpn_backbone"  # p2..p5: the shapes are 8 to 64 px
    m.backbone.freeze_at = 0
    m.resnets.norm = "BN"
    m.resnets.stem_out_channels = 32
    m.resnets.res2_out_channels = 64  # Detectron2's rule for R18/R34
    m.resnets.out_features = ("res2", "res3", "res4")
    m.fpn.in_features = ("res2", "res3", "res4")
    m.fpn.out_channels = 64
    m.fpn.norm = "BN"
    m.anchor_generator.sizes = tuple(
        tuple(x * 2 ** (k / 3) for k in range(3)) for x in (8, 16, 32, 64)
    )
    r = m.retinanet
    r.num_classes = 8
    r.in_features = ("p2", "p3", "p4", "p5")
    # GroupNorm in the towers (a Detectron2 option, `MODEL.RETINANET.NORM`): from scratch, the
    # N(0, 0.01) towers without a norm shrink their input ~300x and barely train in 1800 steps.
    r.norm = "GN"
    # Focal loss with less down-weighting of easy anchors: the classifier, not the boxes, limits
    # AP in this budget (benchmarks/RESULTS.md, "Quickstart RetinaNet").
    r.focal_loss_gamma = 1.0
    r.focal_loss_alpha = 0.5
    if atss:
        # ATSS (`jax_rcnn.matching.atss_assigner`) instead of IoU thresholds 0.4 / 0.5; nothing
        # else changes (same anchors, losses, seed and schedule).
        r.matcher = "atss"
    if one_anchor:
        # One anchor per position, the middle scale x * 2^(1/3), ratio 1 (ATSS paper, #A = 1).
        m.anchor_generator.sizes = tuple((x * 2 ** (1 / 3),) for x in (8, 16, 32, 64))
        m.anchor_generator.aspect_ratios = ((1.0,),)

    quickstart.shapes_schedule(config, base_lr=0.04, arg=arg)
    if arg != "smoke":
        # 1.5x the two-stage quickstarts' 1800 iterations: a one-stage detector from scratch
        # trains more slowly; 2700 iterations take ~14.5 minutes on 2 cores (RESULTS.md).
        s = config.solver
        s.max_iter = 2700
        s.steps = (2160, 2500)
        config.test.eval_period = s.max_iter
    return common.finalize(config)
