"""Assigning predictions (anchors, proposals) to ground truth by match quality (IoU).

**Parity:** reproduces Detectron2 `modeling/matcher.py:Matcher.__call__` and
`set_low_quality_matches_` exactly, on a gt axis padded to a static size G with a `gt_valid`
mask:

* each prediction's match is the argmax over valid gt rows (first index on ties);
* labels come from the thresholds (`low <= quality < high`, thresholds padded with -inf, +inf);
* low-quality matching sets label 1 on every prediction attaining a valid gt row's maximum,
  ties included, without changing its match index; this includes a valid gt whose row is
  all zeros (every prediction with quality 0 to it becomes positive, as in Detectron2);
* no valid gt (Detectron2's empty matrix): matches 0, labels `labels[0]` everywhere.

Padded rows (`gt_valid` False) never match and never trigger low-quality matches. The only
deviation: a NaN quality entry is read as 0 (Detectron2 asserts quality >= 0);
`boxes.pairwise_iou` never produces NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jax_rcnn import boxes as box_ops


def _check_config(thresholds: Sequence[float], labels: Sequence[int]) -> None:
    if not thresholds or thresholds[0] <= 0:
        raise ValueError(f"matcher thresholds must be non-empty and positive, got {thresholds}")
    if any(lo > hi for lo, hi in zip(thresholds[:-1], thresholds[1:], strict=False)):
        raise ValueError(f"matcher thresholds must be non-decreasing, got {thresholds}")
    if len(labels) != len(thresholds) + 1 or any(lab not in (-1, 0, 1) for lab in labels):
        raise ValueError(
            f"matcher needs len(thresholds) + 1 labels in {{-1, 0, 1}}, got {labels} for "
            f"thresholds {thresholds}"
        )


def match(
    quality: jax.Array,
    gt_valid: jax.Array,
    *,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool,
) -> tuple[jax.Array, jax.Array]:
    """Detectron2 `Matcher` on a padded quality matrix.

    Args:
      quality: `f32[G, P]` match quality (IoU) of gt g with prediction p, >= 0.
      gt_valid: `bool[G]` real gt rows; padded rows may hold anything.
      thresholds: e.g. (0.3, 0.7) for the RPN, (0.5,) for the ROI heads.
      labels: one per interval, in {-1 ignore, 0 negative, 1 positive}, e.g. (0, -1, 1).
      allow_low_quality_matches: Faster R-CNN's "best anchor for each gt is positive" rule.

    Returns:
      `(matched_idxs i32[P], match_labels i32[P])`: index in [0, G) of the matched gt (0 when
      no gt is valid), and the label of each prediction.

    Example:
      >>> q = jnp.array([[0.9, 0.2, 0.4], [0.1, 0.5, 0.4]])
      >>> match(q, jnp.array([True, True]), thresholds=(0.3, 0.7), labels=(0, -1, 1),
      ...       allow_low_quality_matches=True)
      (Array([0, 1, 0], dtype=int32), Array([ 1,  1, -1], dtype=int32))

      p1 is gt 1's best (0.5), so it becomes positive although 0.5 < 0.7; p2 ties between
      the gts (first index wins) and is nobody's maximum, so it stays ignored.
    """
    _check_config(thresholds, labels)
    num_gt, num_pred = quality.shape
    if num_gt == 0:
        return (
            jnp.zeros((num_pred,), jnp.int32),
            jnp.full((num_pred,), labels[0], jnp.int32),
        )
    quality = jnp.where(jnp.isnan(quality), 0.0, quality)
    masked = jnp.where(gt_valid[:, None], quality, -jnp.inf)
    matched_idxs = jnp.argmax(masked, axis=0).astype(jnp.int32)
    # With no valid gt every column is -inf, which falls into the first interval: labels[0].
    matched_vals = jnp.max(masked, axis=0)

    bounds = [-jnp.inf, *thresholds, jnp.inf]
    match_labels = jnp.ones((num_pred,), jnp.int32)
    for lab, lo, hi in zip(labels, bounds[:-1], bounds[1:], strict=True):
        in_bin = (matched_vals >= lo) & (matched_vals < hi)
        match_labels = jnp.where(in_bin, lab, match_labels)

    if allow_low_quality_matches:
        row_max = jnp.max(masked, axis=1, keepdims=True, initial=-jnp.inf)
        is_best = (masked == row_max) & gt_valid[:, None]
        match_labels = jnp.where(jnp.any(is_best, axis=0), 1, match_labels)
    return matched_idxs, match_labels


def iou_assigner(
    boxes: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool,
    num_per_level: Sequence[int],
) -> tuple[jax.Array, jax.Array]:
    """Assigner "iou" (the default): Detectron2's `Matcher` on `pairwise_iou(gt, boxes)`.

    Args:
      boxes: `f32[P, 4]` xyxy anchors or proposals.
      gt_boxes: `f32[G, 4]` xyxy (padded rows zeroed by the caller).
      gt_valid: `bool[G]`.
      thresholds, labels, allow_low_quality_matches: as `match`.
      num_per_level: unused (boxes per pyramid level, summing to P).

    Returns:
      `(matched_idxs i32[P], match_labels i32[P])` as `match`. Signature:
      `jax_rcnn.research.Assigner`.
    """
    del num_per_level
    return match(
        box_ops.pairwise_iou(gt_boxes, boxes),
        gt_valid,
        thresholds=thresholds,
        labels=labels,
        allow_low_quality_matches=allow_low_quality_matches,
    )


# ATSS's candidates per level and gt (Zhang et al. 2020, and MMDetection's `ATSSAssigner`).
ATSS_TOPK = 9


def atss_assigner(
    boxes: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool,
    num_per_level: Sequence[int],
) -> tuple[jax.Array, jax.Array]:
    """Assigner "atss": adaptive training sample selection (Zhang et al. 2020).

    For each valid gt: on every level the `min(ATSS_TOPK, A_l)` anchors whose centres are
    closest (L2) to the gt centre are candidates (ties to the lower index); the IoU threshold
    is mean + standard deviation (unbiased, as torch's `std`) of the candidates' IoUs; a
    candidate is positive when its IoU >= the threshold and its centre lies inside the gt
    (more than 0.01 px from each side, MMDetection's `ATSSAssigner`). An anchor positive for
    several gts takes the one with the highest IoU (first on ties). Everything else is
    negative: ATSS has no ignored band, so `thresholds`, `labels` and
    `allow_low_quality_matches` are not read.

    Args:
      boxes: `f32[A, 4]` xyxy anchors, levels concatenated.
      gt_boxes: `f32[G, 4]` xyxy (padded rows zeroed by the caller).
      gt_valid: `bool[G]`.
      num_per_level: static `A_l` per level, summing to A.

    Returns:
      `(matched_idxs i32[A], match_labels i32[A])`: labels 1 / 0 only; matched index 0 for
      negatives. Signature: `jax_rcnn.research.Assigner`.
    """
    del thresholds, labels, allow_low_quality_matches
    num_anchors = boxes.shape[0]
    if sum(num_per_level) != num_anchors:
        raise ValueError(f"num_per_level {tuple(num_per_level)} must sum to A = {num_anchors}")
    iou = box_ops.pairwise_iou(gt_boxes, boxes)  # [G, A]
    acx, acy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    gcx, gcy = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2, (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    dist = jnp.sqrt((gcx[:, None] - acx[None]) ** 2 + (gcy[:, None] - acy[None]) ** 2)
    candidate = jnp.zeros(iou.shape, bool)
    start = 0
    for size in num_per_level:
        k = min(ATSS_TOPK, size)
        if k:
            _, idx = jax.lax.top_k(-dist[:, start : start + size], k)  # [G, k]
            hit = jnp.zeros((iou.shape[0], size), bool)
            hit = jax.vmap(lambda h, i: h.at[i].set(True))(hit, idx)
            candidate = candidate.at[:, start : start + size].set(hit)
        start += size
    num_cand = jnp.maximum(jnp.sum(candidate, axis=1, keepdims=True), 1)
    mean = jnp.sum(jnp.where(candidate, iou, 0.0), axis=1, keepdims=True) / num_cand
    var = jnp.sum(jnp.where(candidate, (iou - mean) ** 2, 0.0), axis=1, keepdims=True)
    std = jnp.sqrt(var / jnp.maximum(num_cand - 1, 1))
    eps = 0.01
    inside = (
        (acx[None] - gt_boxes[:, 0:1] > eps)
        & (acy[None] - gt_boxes[:, 1:2] > eps)
        & (gt_boxes[:, 2:3] - acx[None] > eps)
        & (gt_boxes[:, 3:4] - acy[None] > eps)
    )
    positive = candidate & (iou >= mean + std) & inside & gt_valid[:, None]
    scored = jnp.where(positive, iou, -1.0)
    matched_idxs = jnp.argmax(scored, axis=0).astype(jnp.int32)
    is_pos = jnp.any(positive, axis=0)
    return jnp.where(is_pos, matched_idxs, 0), is_pos.astype(jnp.int32)
