"""RPN proposals: per-level top-k, decode, clip, drop empty, per-level NMS, top-k per image.

**Parity:** reproduces Detectron2's `RPN.predict_proposals` + `find_top_rpn_proposals`
(`modeling/proposal_generator/proposal_utils.py`). Detectron2 decodes every anchor and then
takes the top-k logits per level; decoding is per anchor, so we take the top-k first and decode
only those (same boxes, less work). `batched_nms(boxes, scores, level)` never suppresses across
levels, so it equals NMS run per level (one NMS group per image and level) followed by a merge of
the survivors by logit, which is what we do. Deviations, all in how results are *represented*:
outputs are padded to `post_nms_topk` with `valid=False` (boxes `[0, 0, 0, 0]`, logit 0); where
Detectron2 raises `FloatingPointError` on non-finite boxes in training, we drop them from the
candidates (as Detectron2 does at test time) and report `all_finite=False` so the train step can
stop with a message (an exception cannot be raised inside `jit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_rcnn import boxes as box_ops
from jax_rcnn import kernels


class Proposals(NamedTuple):
    """Per-image proposals, sorted by descending objectness logit.

    Attributes:
      boxes: `f32[B, P, 4]` xyxy, resized-input pixels, clipped to each image.
      logits: `f32[B, P]` objectness logits (not sigmoid).
      valid: `bool[B, P]` real proposals; the rest is padding.
      all_finite: `bool[B]` False when some top-k candidate decoded to a non-finite box
        (Detectron2 raises in training; see module docstring).
    """

    boxes: jax.Array
    logits: jax.Array
    valid: jax.Array
    all_finite: jax.Array


def find_top_rpn_proposals(
    anchors: Sequence[jax.Array],
    pred_objectness_logits: Sequence[jax.Array],
    pred_anchor_deltas: Sequence[jax.Array],
    image_sizes: jax.Array,
    *,
    box2box: box_ops.Box2BoxTransform,
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    backend: str = "auto",
) -> Proposals:
    """Selects RPN proposals exactly as Detectron2 does, with static shapes.

    Args:
      anchors: per level `f32[H_l*W_l*A, 4]` xyxy anchors, order (y, x, anchor).
      pred_objectness_logits: per level `f32[B, H_l*W_l*A]`.
      pred_anchor_deltas: per level `f32[B, H_l*W_l*A, 4]` (dx, dy, dw, dh).
      image_sizes: `i32[B, 2]` (h, w) of each resized image before padding.
      box2box: the RPN box transform (weights (1, 1, 1, 1)).
      nms_thresh: IoU threshold of the per-level NMS (suppress when IoU > thresh).
      pre_nms_topk: candidates kept per level before NMS (`min(pre_nms_topk, H_l*W_l*A)`).
      post_nms_topk: P, proposals kept per image after NMS.
      min_box_size: boxes with a side <= this after clipping are dropped.
      backend: NMS backend, see `jax_rcnn.kernels`.

    Returns:
      `Proposals` with P = `post_nms_topk` slots per image.
    """
    num_images = image_sizes.shape[0]
    ks = [min(pre_nms_topk, int(logits.shape[1])) for logits in pred_objectness_logits]
    k_max = max(ks)
    # Shaped to broadcast against `boxes[..., 0]` of shape [B, k].
    heights = image_sizes[:, 0].astype(jnp.float32)[:, None]
    widths = image_sizes[:, 1].astype(jnp.float32)[:, None]

    level_boxes, level_scores, level_valid, level_finite = [], [], [], []
    for anchors_l, logits_l, deltas_l, k in zip(
        anchors, pred_objectness_logits, pred_anchor_deltas, ks, strict=True
    ):
        scores, idx = jax.lax.top_k(logits_l, k)  # [B, k]
        deltas = jnp.take_along_axis(deltas_l, idx[..., None], axis=1)  # [B, k, 4]
        boxes = box2box.apply_deltas(deltas, jnp.asarray(anchors_l)[idx])  # [B, k, 4]
        finite = jnp.all(jnp.isfinite(boxes), axis=-1) & jnp.isfinite(scores)
        # Sanitise before clipping so no NaN flows through `where` into gradients.
        boxes = jnp.where(finite[..., None], boxes, 0.0)
        scores = jnp.where(finite, scores, 0.0)
        boxes = box_ops.clip(boxes, heights, widths)
        valid = finite & box_ops.nonempty(boxes, threshold=min_box_size)
        pad = k_max - k
        level_boxes.append(jnp.pad(boxes, ((0, 0), (0, pad), (0, 0))))
        level_scores.append(jnp.pad(scores, ((0, 0), (0, pad))))
        level_valid.append(jnp.pad(valid, ((0, 0), (0, pad))))
        level_finite.append(jnp.all(finite, axis=1))

    num_levels = len(ks)
    boxes = jnp.stack(level_boxes, axis=1)  # [B, L, K, 4]
    scores = jnp.stack(level_scores, axis=1)  # [B, L, K]
    valid = jnp.stack(level_valid, axis=1)
    max_keep = min(k_max, post_nms_topk)
    keep, keep_valid = kernels.nms(
        boxes.reshape(num_images * num_levels, k_max, 4),
        scores.reshape(num_images * num_levels, k_max),
        valid.reshape(num_images * num_levels, k_max),
        iou_threshold=nms_thresh,
        max_output=max_keep,
        backend=backend,
    )
    keep = keep.reshape(num_images, num_levels * max_keep)
    keep_valid = keep_valid.reshape(num_images, num_levels * max_keep)
    level_offset = jnp.repeat(jnp.arange(num_levels) * k_max, max_keep)[None]
    flat_idx = keep + level_offset  # index into the [L * K] candidates of each image
    kept_scores = jnp.take_along_axis(scores.reshape(num_images, -1), flat_idx, axis=1)
    kept_boxes = jnp.take_along_axis(boxes.reshape(num_images, -1, 4), flat_idx[..., None], 1)

    # Merge the levels by logit: Detectron2's `keep[:post_nms_topk]` of a score-sorted keep.
    num_out = min(post_nms_topk, num_levels * max_keep)
    ranked = jnp.where(keep_valid, kept_scores, -jnp.inf)
    _, order = jax.lax.top_k(ranked, num_out)
    out_valid = jnp.take_along_axis(keep_valid, order, axis=1)
    out_boxes = jnp.take_along_axis(kept_boxes, order[..., None], axis=1)
    out_logits = jnp.take_along_axis(kept_scores, order, axis=1)
    out_boxes = jnp.where(out_valid[..., None], out_boxes, 0.0)
    out_logits = jnp.where(out_valid, out_logits, 0.0)
    pad = post_nms_topk - num_out
    if pad:
        out_boxes = jnp.pad(out_boxes, ((0, 0), (0, pad), (0, 0)))
        out_logits = jnp.pad(out_logits, ((0, 0), (0, pad)))
        out_valid = jnp.pad(out_valid, ((0, 0), (0, pad)))
    all_finite = jnp.all(jnp.stack(level_finite, axis=1), axis=1)
    return Proposals(out_boxes, out_logits, out_valid, all_finite)


def add_ground_truth_to_proposals(
    proposals: Proposals, gt_boxes: jax.Array, gt_valid: jax.Array
) -> Proposals:
    """Appends the ground-truth boxes to the proposals (Detectron2 `PROPOSAL_APPEND_GT`).

    **Parity:** `add_ground_truth_to_proposals`; GT rows get the objectness logit
    `log((1 - 1e-10) / 1e-10)`. Proposals carry no gradient (`stop_gradient`).

    Args:
      proposals: `Proposals` with P slots.
      gt_boxes: `f32[B, G, 4]` xyxy.
      gt_valid: `bool[B, G]`.

    Returns:
      `Proposals` with P + G slots: the proposals followed by the GT boxes.
    """
    gt_logit = jnp.log((1.0 - 1e-10) / 1e-10)
    gt_boxes = jnp.where(gt_valid[..., None], gt_boxes, 0.0)
    return Proposals(
        boxes=jax.lax.stop_gradient(jnp.concatenate([proposals.boxes, gt_boxes], axis=1)),
        logits=jnp.concatenate(
            [proposals.logits, jnp.where(gt_valid, gt_logit, 0.0).astype(proposals.logits.dtype)],
            axis=1,
        ),
        valid=jnp.concatenate([proposals.valid, gt_valid], axis=1),
        all_finite=proposals.all_finite,
    )
