"""The dense-head stage of one-stage detectors (RetinaNet): head, anchor labels, losses, detections.

**Parity:** Detectron2's `RetinaNet` / `DenseDetector` (`modeling/meta_arch/retinanet.py`,
`dense_detector.py`): anchors of `DefaultAnchorGenerator` on `MODEL.RETINANET.IN_FEATURES`,
every anchor labelled by `Matcher(IOU_THRESHOLDS, IOU_LABELS, allow_low_quality_matches=True)`
(`jax_rcnn.targets.label_anchors_dense`), focal and box losses (`jax_rcnn.losses.
retinanet_losses`) divided by an EMA of the foreground-anchor count, and per-level top-k
decoding + per-class NMS at test time (`jax_rcnn.postprocess.dense_inference`).

**Deliberate difference (documented in docs/parity.md):** Detectron2 keeps the loss normaliser
as a Python attribute of each process: not all-reduced across GPUs, not checkpointed, reset to
its initial value (100) on resume. Here it is part of the train state (`TrainState.loss_state`,
saved in checkpoints, so a resumed run continues exactly) and counts the foreground anchors of
the global batch (the step sees the whole batch on every device). On one device and without a
resume the numbers are Detectron2's.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_rcnn import losses as loss_ops
from jax_rcnn import postprocess, research, targets
from jax_rcnn.meta_arch.common import Networks, label_on_first_gt
from jax_rcnn.meta_arch.rpn import level_anchors

# Detectron2's `DenseDetector._ema_update` of `loss_normalizer`: initial value and momentum.
NORMALIZER_INIT = 100.0
NORMALIZER_MOMENTUM = 0.9


class DenseOutputs(NamedTuple):
    """The dense head on every level.

    Attributes:
      anchors: per level `f32[H_l*W_l*A, 4]` xyxy.
      cls_logits: per level `f32[B, H_l*W_l*A, K]`.
      box_deltas: per level `f32[B, H_l*W_l*A, 4]`.
    """

    anchors: list[Any]
    cls_logits: list[jax.Array]
    box_deltas: list[jax.Array]


def dense_head(config, nets: Networks, features: dict[str, jax.Array]) -> DenseOutputs:
    """The shared head on `config.model.retinanet.in_features`, with those levels' anchors."""
    logits, deltas = nets.dense_head(features)
    anchors = level_anchors(config, features, tuple(config.model.retinanet.in_features))
    return DenseOutputs(anchors, logits, deltas)


def initial_loss_state() -> dict[str, jax.Array]:
    """`{"loss_normalizer": f32[]}` before the first step (Detectron2's 100)."""
    return {"loss_normalizer": jnp.asarray(NORMALIZER_INIT, jnp.float32)}


def dense_losses(
    config, out: DenseOutputs, gt: dict[str, jax.Array], loss_state: dict[str, jax.Array]
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
    """Every anchor labelled, then `loss_cls` (focal) and `loss_box_reg` over the EMA normaliser.

    Args:
      config: the jax_rcnn config (`model.retinanet`).
      out: `dense_head` outputs.
      gt: `gt_boxes f32[B, G, 4]`, `gt_classes i32[B, G]`, `gt_valid bool[B, G]`.
      loss_state: `{"loss_normalizer": f32[]}` of the previous step (`initial_loss_state`).

    Returns:
      `(losses, new_loss_state, gt_labels i32[B, A])`; the normaliser used is
      `0.9 * previous + 0.1 * max(num_foreground_anchors_in_batch, 1)`.
    """
    r = config.model.retinanet
    all_anchors = jax.lax.optimization_barrier(jnp.concatenate(out.anchors, axis=0))
    label = functools.partial(
        targets.label_anchors_dense,
        iou_thresholds=r.iou_thresholds,
        iou_labels=r.iou_labels,
        num_classes=r.num_classes,
        assigner=research.get(r, "matcher", "iou"),
        num_per_level=tuple(a.shape[0] for a in out.anchors),
    )
    gt_labels, matched = label_on_first_gt(
        lambda boxes, valid, classes: label(all_anchors, boxes, classes, valid),
        gt["gt_boxes"],
        gt["gt_valid"],
        gt["gt_classes"],
    )
    num_fg = jnp.sum((gt_labels >= 0) & (gt_labels != r.num_classes))
    previous = loss_state["loss_normalizer"]
    normalizer = NORMALIZER_MOMENTUM * previous + (1 - NORMALIZER_MOMENTUM) * jnp.maximum(
        num_fg, 1
    ).astype(jnp.float32)
    normalizer = jax.lax.stop_gradient(normalizer)
    losses = loss_ops.retinanet_losses(
        jnp.concatenate(out.cls_logits, axis=1),
        jnp.concatenate(out.box_deltas, axis=1),
        all_anchors,
        gt_labels,
        matched,
        normalizer,
        box2box=research.box_coder(r),
        focal_alpha=r.focal_loss_alpha,
        focal_gamma=r.focal_loss_gamma,
        bbox_reg_loss_type=research.box_reg_loss(r),
        smooth_l1_beta=r.smooth_l1_loss_beta,
    )
    return losses, {"loss_normalizer": normalizer}, gt_labels


def detect(config, out: DenseOutputs, backend: str) -> postprocess.Detections:
    """Per-level threshold + top-k, decoding, per-class NMS: detections in the resized frame."""
    r = config.model.retinanet
    return postprocess.dense_inference(
        out.cls_logits,
        out.box_deltas,
        out.anchors,
        box2box=research.box_coder(r),
        score_thresh=r.score_thresh_test,
        topk_candidates=r.topk_candidates_test,
        nms_thresh=r.nms_thresh_test,
        topk_per_image=config.test.detections_per_image,
        backend=backend,
        nms=research.get(r, "test_nms", "nms"),
    )
