"""Cascade R-CNN's ROI-head stages (`CascadeROIHeads`): box stages in a row, each refining the
previous stage's boxes, then the mask head.

**Parity:** Detectron2's `modeling/roi_heads/cascade_rcnn.py`:

* stage 1 trains on `StandardROIHeads`' sampled ROIs (gt appended once, `roi_heads.sample_rois`);
  stage k+1 trains on stage k's class-agnostic decode of *all* its ROIs (fg and bg), detached
  and clipped to the image, relabelled at `roi_box_cascade_head.ious[k+1]` (fg: IoU >= t with
  the argmax gt's class, else background; no ignore band, no subsampling, no gt appended).
  Detectron2 drops empty boxes in training; here they stay in their slot with `valid` False,
  so they count neither in the losses nor in the ROI count the losses divide by.
* losses `loss_cls_stage{k}` / `loss_box_reg_stage{k}`: `FastRCNNOutputLayers.losses` with the
  stage's box weights, divided by that stage's valid ROI count.
* the pooled features of each stage pass through `scale_gradient(x, 1 / num_stages)` in
  training (`_ScaleGradient`): identity forward, backward times 1/num_stages.
* inference: every stage runs on all proposal slots (boxes clipped, not filtered, so the
  stages stay aligned); scores are the mean of the stages' softmax, boxes the last stage's
  decode; then `fast_rcnn_inference` with the one agnostic box shared by every class.
* the mask head trains on stage 1's foreground ROIs (pooled at those boxes, not the refined
  ones) and runs on the final detections (`roi_heads.mask_losses`, `roi_heads.mask_probs`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_rcnn import boxes as box_ops
from jax_rcnn import losses as loss_ops
from jax_rcnn import matching, postprocess, proposals, research, targets
from jax_rcnn.meta_arch import roi_heads
from jax_rcnn.meta_arch.common import Networks

# The stage-1 ROIs and the mask head are `StandardROIHeads`' own stages.
sample_rois = roi_heads.sample_rois
mask_probs = roi_heads.mask_probs


class StageOutputs(NamedTuple):
    """One cascade stage on `[B, R]` boxes.

    Attributes:
      boxes: `f32[B, R, 4]` the stage's input boxes, xyxy resized-input px.
      cls_logits: `f32[B, R, K+1]`.
      box_deltas: `f32[B, R, 4]` class-agnostic.
      decoded: `f32[B, R, 4]` `apply_deltas` with the stage's weights, before clipping.
    """

    boxes: jax.Array
    cls_logits: jax.Array
    box_deltas: jax.Array
    decoded: jax.Array


def num_stages(config) -> int:
    """Number of cascade stages, `len(model.roi_box_cascade_head.ious)`."""
    return len(config.model.roi_box_cascade_head.ious)


def stage_box2box(config, stage: int) -> box_ops.Box2BoxTransform:
    """The box coder (`roi_box_head.box_coder`) of `stage` with its weights
    (`roi_box_cascade_head.bbox_reg_weights[stage]`)."""
    weights = config.model.roi_box_cascade_head.bbox_reg_weights[stage]
    return research.box_coder(config.model.roi_box_head, tuple(float(w) for w in weights))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity whose backward multiplies the cotangent by `scale` (Detectron2's
    `_ScaleGradient`). `x` any array, `scale` a Python float."""
    return x


def _scale_fwd(x, scale):
    return x, None


def _scale_bwd(scale, _, g):
    return (g * scale,)


scale_gradient.defvjp(_scale_fwd, _scale_bwd)


def run_stage(
    config, nets: Networks, features, boxes: jax.Array, stage: int, backend: str, training: bool
) -> StageOutputs:
    """Pool `boxes f32[B, R, 4]` with the shared box pooler and run stage `stage`'s head and
    predictor; in training the pooled features get the 1/num_stages gradient scale."""
    pooled = roi_heads.pool(config, features, boxes, config.model.roi_box_head, backend)
    if training:
        pooled = scale_gradient(pooled, 1.0 / num_stages(config))
    cls_logits, box_deltas = nets.box_head(pooled, stage)
    decoded = stage_box2box(config, stage).apply_deltas(box_deltas, boxes)
    return StageOutputs(boxes, cls_logits, box_deltas, decoded)


def next_boxes(decoded: jax.Array, image_sizes: jax.Array) -> jax.Array:
    """Next stage's input: `decoded f32[B, R, 4]` detached and clipped to `image_sizes
    i32[B, 2]` (Detectron2's `_create_proposals_from_boxes`), `f32[B, R, 4]`."""
    h = image_sizes[:, 0].astype(decoded.dtype)[:, None]
    w = image_sizes[:, 1].astype(decoded.dtype)[:, None]
    return box_ops.clip(jax.lax.stop_gradient(decoded), h, w)


def label_boxes(
    boxes: jax.Array,
    valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    iou_threshold: float,
    num_classes: int,
) -> targets.ROITargets:
    """`_match_and_label_boxes` for one image: every box matched, none sampled.

    Args:
      boxes: `f32[R, 4]` the stage's boxes.
      valid: `bool[R]` boxes to train on (non-empty, from a valid ROI).
      gt_boxes: `f32[G, 4]`.
      gt_classes: `i32[G]`.
      gt_valid: `bool[G]`.
      iou_threshold: fg at IoU >= this (labels (0, 1), no low-quality matches).
      num_classes: K; background is K.

    Returns:
      `ROITargets` `[R]` in the input order (`index` = arange); gt_boxes zeros without gt.
    """
    gt_valid = gt_valid.astype(bool)
    gt_boxes = jnp.where(gt_valid[:, None], gt_boxes, 0.0)
    quality = box_ops.pairwise_iou(gt_boxes, boxes)
    matched, labels = matching.match(
        quality, gt_valid, thresholds=(iou_threshold,), labels=(0, 1),
        allow_low_quality_matches=False,
    )  # fmt: skip
    classes = jnp.where((labels == 1) & valid, gt_classes[matched], num_classes)
    has_gt = jnp.any(gt_valid)
    out = targets.ROITargets(
        proposal_boxes=jnp.where(valid[:, None], boxes, 0.0),
        gt_classes=classes.astype(jnp.int32),
        gt_boxes=jnp.where(valid[:, None] & has_gt, gt_boxes[matched], 0.0),
        gt_index=matched,
        valid=valid,
        index=jnp.arange(boxes.shape[0], dtype=jnp.int32),
    )
    return jax.tree.map(jax.lax.stop_gradient, out)


def stage_losses(config, out: StageOutputs, rois: targets.ROITargets, stage: int, key=None):
    """`FastRCNNOutputLayers.losses` of one stage: `{"loss_cls_stage{k}", "loss_box_reg_stage{k}"}`
    (f32[]), CE and agnostic box loss (the stage's weights) over its valid ROIs; `key` draws
    the stage's federated-loss classes (`roi_box_head.use_fed_loss`)."""
    bh = config.model.roi_box_head
    losses = loss_ops.fast_rcnn_losses(
        out.cls_logits,
        out.box_deltas,
        rois.proposal_boxes,
        rois.gt_classes,
        rois.gt_boxes,
        rois.valid,
        box2box=stage_box2box(config, stage),
        smooth_l1_beta=bh.smooth_l1_beta,
        bbox_reg_loss_weight=bh.bbox_reg_loss_weight,
        box_reg_loss=research.box_reg_loss(bh),
        cls_loss=roi_heads.cls_loss_fn(config, rois.gt_classes, rois.valid, key),
    )
    return {f"{k}_stage{stage}": v for k, v in losses.items()}


def losses(
    config,
    nets: Networks,
    features,
    rois: targets.ROITargets,
    gt: dict[str, jax.Array],
    key: jax.Array,
    backend: str,
):
    """Every ROI-head loss of `CascadeROIHeads` (see the module docstring).

    Args:
      config: the jax_rcnn config.
      nets: the bound networks.
      features: the FPN dict.
      rois: stage 1's `sample_rois` output, `[B, R]`, foreground first.
      gt: `image_size i32[B, 2]`, `gt_boxes`, `gt_classes`, `gt_valid`[, `gt_masks`].
      key: the ROI-sampling key (the mask-ROI draw uses `fold_in(key, 1)`).
      backend: kernel backend.

    Returns:
      `(losses {"loss_cls_stage{k}", "loss_box_reg_stage{k}"[, "loss_mask"]}, aux)`; aux
      holds `stage_rois` (the `ROITargets` `[B, R]` of every stage), `stage_outputs`
      (`StageOutputs` of every stage) and the mask branch's aux (`roi_heads.mask_losses`).
    """
    rh = config.model.roi_heads
    out, stage_rois, stage_outs = {}, [], []
    for k in range(num_stages(config)):
        if k > 0:
            boxes = next_boxes(stage_outs[-1].decoded, gt["image_size"])
            valid = rois.valid & box_ops.nonempty(boxes)
            label = functools.partial(
                label_boxes,
                iou_threshold=float(config.model.roi_box_cascade_head.ious[k]),
                num_classes=rh.num_classes,
            )
            rois = jax.vmap(label)(boxes, valid, gt["gt_boxes"], gt["gt_classes"], gt["gt_valid"])
        stage_out = run_stage(config, nets, features, rois.proposal_boxes, k, backend, True)
        fed_key = jax.random.fold_in(jax.random.fold_in(key, 2), k)  # use_fed_loss only
        out.update(stage_losses(config, stage_out, rois, k, fed_key))
        stage_rois.append(rois)
        stage_outs.append(stage_out)
    aux: dict[str, Any] = {"stage_rois": stage_rois, "stage_outputs": stage_outs}
    if config.model.mask_on:
        mask_key = jax.random.fold_in(key, 1)
        mask_loss, mask_aux = roi_heads.mask_losses(
            config, nets, features, stage_rois[0], gt, mask_key, backend
        )
        out.update(mask_loss)
        aux.update(mask_aux)
    return out, aux


def cascade_boxes(
    config, nets: Networks, features, props: proposals.Proposals, image_sizes, backend: str
) -> list[StageOutputs]:
    """Every stage on the proposals at test time: stage k+1 runs on stage k's clipped decode
    (not filtered). Returns one `StageOutputs` (`[B, P]`) per stage."""
    boxes, outs = props.boxes, []
    for k in range(num_stages(config)):
        if k > 0:
            boxes = next_boxes(outs[-1].decoded, image_sizes)
        outs.append(run_stage(config, nets, features, boxes, k, backend, False))
    return outs


def detect_boxes(
    config, nets: Networks, features, props: proposals.Proposals, image_sizes, backend: str
) -> postprocess.Detections:
    """Cascade inference: mean of the stages' softmax scores, the last stage's boxes, then
    `fast_rcnn_inference`.

    Args:
      config: the jax_rcnn config.
      nets: the bound networks.
      features: the FPN dict.
      props: `proposals.Proposals` (P slots).
      image_sizes: `i32[B, 2]`.
      backend: kernel backend.

    Returns:
      `postprocess.Detections` with `config.test.detections_per_image` slots, resized frame.
    """
    outs = cascade_boxes(config, nets, features, props, image_sizes, backend)
    probs = [roi_heads.class_probs(config, o.cls_logits) for o in outs]
    scores = sum(probs[1:], probs[0]) * (1.0 / len(probs))
    rh = config.model.roi_heads
    return postprocess.fast_rcnn_inference(
        outs[-1].decoded,
        scores,
        props.valid,
        image_sizes,
        score_thresh=rh.score_thresh_test,
        nms_thresh=rh.nms_thresh_test,
        topk_per_image=config.test.detections_per_image,
        backend=backend,
        nms=research.get(rh, "test_nms", "nms"),
    )
