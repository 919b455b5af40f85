"""The C4 ROI-head stages (`Res5ROIHeads`): pool 14x14 on res4, res5 as the head, predictor on
its spatial mean, mask head on its output.

**Parity:** Detectron2's `Res5ROIHeads` (`modeling/roi_heads/roi_heads.py`): ROIs sampled as in
`StandardROIHeads` (`roi_heads.sample_rois`); ROIAlignV2 `ROI_BOX_HEAD.POOLER_RESOLUTION`
(14) on the single input feature (res4, scale 1/16, no level assignment); res5 (3 bottleneck
blocks, the first with stride 2) takes 14x14 to 7x7; `mean(dim=[2, 3])` feeds
`FastRCNNOutputLayers`. The mask head (`MaskRCNNConvUpsampleHead`, no convs) deconvolves the
7x7 res5 output to 14x14 logits: in training on the box branch's res5 rows of the foreground
ROIs (no second pooling, so the mask loss reaches res5, the pooler and the backbone through
them), at test on res5 run again on the final detection boxes. `ROI_MASK_HEAD.POOLER_*` is not
read. The mask head runs on all `F` foreground slots in training (no `run_on_first_slots`
switch: its input is already computed and it has no convs). At test time res5 runs on the
first proposal slots that hold every valid proposal (`PROPOSAL_SLOT_SIZES`), not on padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_rcnn import losses as loss_ops
from jax_rcnn import postprocess, proposals, targets
from jax_rcnn.meta_arch import roi_heads
from jax_rcnn.meta_arch.common import Networks, run_on_first_slots
from jax_rcnn.meta_arch.roi_heads import sample_rois

__all__ = ["detect_boxes", "losses", "mask_probs", "res5_features", "sample_rois"]

# Candidate proposal counts for res5 at test time (`run_on_first_slots`; the padded count is
# always one): fewer valid proposals (small images, few objects) cost proportionally less.
PROPOSAL_SLOT_SIZES = (64, 128, 256, 512)


def res5_features(config, nets: Networks, features, boxes: jax.Array, backend: str) -> jax.Array:
    """res5 on the 14x14 ROIAlignV2 pool of `boxes f32[B, R, 4]` (resized-input px) from the
    ROI heads' input feature: `f32[B, R, 7, 7, C5]`."""
    pooled = roi_heads.pool(config, features, boxes, config.model.roi_box_head, backend)
    return nets.res5_head(pooled)


def detect_boxes(
    config, nets: Networks, features, props: proposals.Proposals, image_sizes, backend: str
) -> postprocess.Detections:
    """Box predictor on res5 of the pooled proposals -> detections (`roi_heads.box_detections`).

    Args:
      config: the jax_rcnn config.
      nets: the bound networks (a `Res5ROIHeads` model).
      features: `{"res4": f32[B, Hf, Wf, C4]}`.
      props: `proposals.Proposals` (P slots).
      image_sizes: `i32[B, 2]`.
      backend: kernel backend.

    Returns:
      `postprocess.Detections` with `config.test.detections_per_image` slots, resized frame.
    """
    num_slots = props.boxes.shape[1]

    def run_first(n):
        def branch(boxes):
            x = res5_features(config, nets, features, boxes[:, :n], backend)
            pad = ((0, 0), (0, num_slots - n), (0, 0))
            return tuple(jnp.pad(a, pad) for a in nets.box_head(x))

        return branch

    # res5 is most of the C4 model's inference cost (~1.5 GFLOP per proposal): run it on the
    # first slots holding every valid proposal (valid proposals come first), as Detectron2
    # runs it on the proposals that survive, not on padding.
    cls_logits, box_deltas = run_on_first_slots(
        props.valid, run_first, props.boxes, sizes=PROPOSAL_SLOT_SIZES
    )
    return roi_heads.box_detections(config, cls_logits, box_deltas, props, image_sizes, backend)


def mask_probs(config, nets: Networks, features, dets: postprocess.Detections, backend: str):
    """Sigmoid 14x14 mask of each detection's class, `f32[B, D, 14, 14]` (0 in invalid slots):
    res4 pooled again at the detection boxes, res5 again, then the mask head
    (`Res5ROIHeads.forward_with_given_boxes`)."""

    def mask_logits(boxes):
        return nets.mask_head(res5_features(config, nets, features, boxes, backend))

    return roi_heads.predicted_mask_probs(dets, mask_logits)


def losses(
    config,
    nets: Networks,
    features,
    rois: targets.ROITargets,
    gt: dict[str, jax.Array],
    key: jax.Array,
    backend: str,
):
    """Every `Res5ROIHeads` loss; res5 runs once, on all sampled ROIs.

    Args:
      config: the jax_rcnn config.
      nets: the bound networks.
      features: `{"res4": f32[B, Hf, Wf, C4]}`.
      rois: `sample_rois` output, `[B, R]`, foreground first.
      gt: `gt_boxes f32[B, G, 4]`, ...[, `gt_masks`] (see `rcnn.forward_train`).
      key: the ROI-sampling key (`roi_mask_head.num_sampled_masks` draws with
        `fold_in(key, 1)`).
      backend: kernel backend.

    Returns:
      `(losses {"loss_cls", "loss_box_reg"[, "loss_mask"]}, aux)`; with masks aux holds
      `mask_targets f32[B, F, 14, 14]` and `mask_logits f32[B, F, 14, 14, K]` of the F
      foreground slots `rois[:, :F]` (or of the drawn ones).
    """
    m = config.model
    x = res5_features(config, nets, features, rois.proposal_boxes, backend)  # [B, R, 7, 7, C5]
    cls_logits, box_deltas = nets.box_head(x)
    fed_key = jax.random.fold_in(key, 2)  # federated-loss classes (`use_fed_loss`)
    out = roi_heads.fast_rcnn_losses(config, cls_logits, box_deltas, rois, fed_key)
    if not m.mask_on:
        return out, {}

    rh = m.roi_heads
    num_fg = targets.num_fg_slots(
        rh.batch_size_per_image, rh.positive_fraction, rois.valid.shape[1]
    )
    fg_rois, fg_x = jax.tree.map(lambda a: a[:, :num_fg], (rois, x))
    fg_valid = fg_rois.valid & (fg_rois.gt_classes < rh.num_classes)
    num_sampled = m.roi_mask_head.num_sampled_masks
    if 0 < num_sampled < num_fg:
        (fg_rois, fg_x), fg_valid = roi_heads.sample_mask_rois(
            jax.random.fold_in(key, 1), (fg_rois, fg_x), fg_valid, num_sampled
        )
    fg_boxes = jnp.where(fg_valid[..., None], fg_rois.proposal_boxes, 0.0)
    logits = nets.mask_head(fg_x)  # [B, F, 14, 14, K]
    tgt = targets.mask_targets(
        gt["gt_masks"],
        gt["gt_boxes"],
        fg_boxes,
        fg_rois.gt_index,
        fg_valid,
        logits.shape[-2],
        backend=backend,
    )
    out["loss_mask"] = loss_ops.mask_rcnn_loss(logits, fg_rois.gt_classes, tgt, fg_valid)
    return out, {"mask_targets": tgt, "mask_logits": logits}
