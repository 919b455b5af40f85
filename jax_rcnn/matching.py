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
