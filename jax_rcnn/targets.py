"""Training targets: RPN and RetinaNet anchor labels, sampled ROIs, mask targets.

**Parity:** reproduces Detectron2's `RPN.label_and_sample_anchors`
(`modeling/proposal_generator/rpn.py`), `RetinaNet.label_anchors`,
`StandardROIHeads.label_and_sample_proposals` / `_sample_proposals`
(`modeling/roi_heads/roi_heads.py`) and the target side of `mask_head.py:mask_rcnn_loss`
(`BitMasks.crop_and_resize(proposal_boxes, 28) >= 0.5` of the matched gt mask). Matching is
`jax_rcnn.matching.match` (Detectron2 `Matcher`), sampling is
`jax_rcnn.sampling.subsample_labels` (same counts and distribution, different random draws).
Deviations, all in representation:

* gt arrives padded to G with `gt_valid`; padded rows never match, and their content (even
  NaN) changes nothing. Proposal slots with `valid=False` are never matched nor sampled.
* the sampled ROIs of an image live in a fixed number of slots `R = min(batch_size_per_image,
  P)` with a `valid` mask, **foreground first** (Detectron2 concatenates the random fg then bg
  index lists; the order never reaches a loss). Hence the foreground of every image sits in its
  first `F = num_fg_slots(...)` slots, which is what the mask head uses.
* Anchors outside the image are only ignored when `boundary_thresh >= 0` (Detectron2's
  `anchors.inside_box`; the default -1 keeps every anchor, as in every model-zoo config).
* Mask targets come from one of two gt mask representations, told apart by dtype (see
  `mask_targets`): `bool[..., G, Hm, Wm]` full-image bitmasks give Detectron2's targets exactly;
  `u8[..., G, M, M]` box-relative soft masks (`jax_rcnn.data.batching.make_train_example`)
  give `jax_rcnn.data.batching.mask_target_reference`, a close approximation.

Functions are written per image (`label_and_sample_*`) and batched with `jax.vmap` at the call
site; `mask_targets` takes an explicit batch (one ROIAlign call). Nothing here carries a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_rcnn import boxes as box_ops
from jax_rcnn import masks as mask_ops
from jax_rcnn import matching, sampling


class AnchorTargets(NamedTuple):
    """RPN targets of one image (`rpn.py:label_and_sample_anchors` output).

    Attributes:
      labels: `i32[A]` 1 foreground, 0 background, -1 ignored or not sampled.
      matched_gt_boxes: `f32[A, 4]` xyxy gt box matched to each anchor (`[0, 0, 0, 0]` when the
        image has no valid gt); meaningful where `labels == 1`.
    """

    labels: jax.Array
    matched_gt_boxes: jax.Array


class ROITargets(NamedTuple):
    """Sampled ROIs of one image, foreground first (see the module docstring).

    Attributes:
      proposal_boxes: `f32[R, 4]` xyxy ROI boxes (`[0, 0, 0, 0]` in unused slots).
      gt_classes: `i32[R]` class in [0, K) for foreground, K for background and unused slots.
      gt_boxes: `f32[R, 4]` matched gt box (`[0, 0, 0, 0]` when the image has no valid gt).
      gt_index: `i32[R]` matched gt row in [0, G).
      valid: `bool[R]` sampled ROI; the rest is padding.
      index: `i32[R]` row of each ROI among the candidate proposals `[0, P)`.
    """

    proposal_boxes: jax.Array
    gt_classes: jax.Array
    gt_boxes: jax.Array
    gt_index: jax.Array
    valid: jax.Array
    index: jax.Array


def num_roi_slots(batch_size_per_image: int, num_candidates: int) -> int:
    """R: slots per image holding every sampled ROI, `min(batch_size_per_image, P)`."""
    return min(int(batch_size_per_image), int(num_candidates))


def num_fg_slots(batch_size_per_image: int, positive_fraction: float, num_candidates: int) -> int:
    """F: slots per image holding every sampled foreground ROI.

    Detectron2 samples at most `int(batch_size_per_image * positive_fraction)` foreground
    ROIs, and never more than the candidates, so `F = min(R, int(bspi * fraction))`: 128 with
    the defaults (512, 0.25); `R` itself when `batch_size_per_image` is huge (parity runs).
    """
    max_fg = int(batch_size_per_image * positive_fraction)
    return min(num_roi_slots(batch_size_per_image, num_candidates), max_fg)


def _inside_image(anchors: jax.Array, image_size: jax.Array, thresh: float) -> jax.Array:
    """Detectron2 `Boxes.inside_box((h, w), boundary_threshold)`."""
    h = image_size[0].astype(anchors.dtype)
    w = image_size[1].astype(anchors.dtype)
    return (
        (anchors[:, 0] >= -thresh)
        & (anchors[:, 1] >= -thresh)
        & (anchors[:, 2] < w + thresh)
        & (anchors[:, 3] < h + thresh)
    )


def _match_anchors(anchors, gt_boxes, gt_valid, iou_thresholds, iou_labels, assigner, levels):
    """The assigner (default: Matcher with low-quality matches on IoU(gt, anchors)) of one
    image: `(gt_boxes` with padded rows zeroed, `gt_valid` as bool, `matched_idxs i32[A]`,
    `labels i32[A])`."""
    gt_valid = gt_valid.astype(bool)
    gt_boxes = jnp.where(gt_valid[:, None], gt_boxes, 0.0)
    matched_idxs, labels = (assigner or matching.iou_assigner)(
        anchors,
        gt_boxes,
        gt_valid,
        thresholds=tuple(iou_thresholds),
        labels=tuple(iou_labels),
        allow_low_quality_matches=True,
        num_per_level=tuple(levels) if levels else (anchors.shape[0],),
    )
    return gt_boxes, gt_valid, matched_idxs, labels


def label_and_sample_anchors(
    key: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    image_size: jax.Array,
    *,
    iou_thresholds: Sequence[float],
    iou_labels: Sequence[int],
    batch_size_per_image: int,
    positive_fraction: float,
    boundary_thresh: float = -1.0,
    assigner=None,
    sampler=None,
    num_per_level: Sequence[int] = (),
) -> AnchorTargets:
    """Labels every anchor of one image and subsamples them (Detectron2's RPN targets).

    Args:
      key: PRNG key of this image, consumed by the sampler.
      anchors: `f32[A, 4]` xyxy anchors of all levels, concatenated p2..p6.
      gt_boxes: `f32[G, 4]` xyxy gt boxes (padded rows may hold anything, NaN included).
      gt_valid: `bool[G]`.
      image_size: `i32[2]` (h, w) before padding (only read when `boundary_thresh >= 0`).
      iou_thresholds: Matcher thresholds, (0.3, 0.7).
      iou_labels: Matcher labels, (0, -1, 1).
      batch_size_per_image: anchors sampled per image (256).
      positive_fraction: cap on the positive share (0.5).
      boundary_thresh: anchors sticking out of the image by more than this are ignored;
        negative (Detectron2's default -1) keeps them all.
      assigner: a `jax_rcnn.research.Assigner` (None: Detectron2's Matcher on IoU).
      sampler: a `jax_rcnn.research.Sampler` (None: `sampling.subsample_labels`).
      num_per_level: anchors per level (for the assigner; empty: one level).

    Returns:
      `AnchorTargets`. With no valid gt every anchor is background before sampling, as in
      Detectron2 (Matcher on an empty matrix), so `batch_size_per_image` negatives are drawn.

    Example:
      One gt `[0, 0, 10, 10]` and anchors `[0, 0, 10, 10]`, `[0, 0, 10, 20]`, `[50, 50, 60,
      60]`: IoUs 1, 0.5, 0 give labels 1, -1 (between 0.3 and 0.7), 0.
    """
    gt_boxes, gt_valid, matched_idxs, labels = _match_anchors(
        anchors, gt_boxes, gt_valid, iou_thresholds, iou_labels, assigner, num_per_level
    )
    if boundary_thresh >= 0:
        labels = jnp.where(_inside_image(anchors, image_size, boundary_thresh), labels, -1)
    if sampler is None:
        pos, neg = sampling.subsample_labels(key, labels, batch_size_per_image, positive_fraction)
    else:
        quality = _best_iou(gt_boxes, gt_valid, anchors)
        pos, neg = sampler(
            key,
            labels,
            quality,
            jnp.zeros_like(quality),
            num_samples=batch_size_per_image,
            positive_fraction=positive_fraction,
            bg_label=0,
        )
    labels = jnp.where(pos, 1, jnp.where(neg, 0, -1)).astype(jnp.int32)
    matched = jnp.where(jnp.any(gt_valid), gt_boxes[matched_idxs], 0.0)
    return AnchorTargets(jax.lax.stop_gradient(labels), jax.lax.stop_gradient(matched))


def label_anchors_dense(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    iou_thresholds: Sequence[float],
    iou_labels: Sequence[int],
    num_classes: int,
    assigner=None,
    num_per_level: Sequence[int] = (),
) -> tuple[jax.Array, jax.Array]:
    """Class label and matched gt box of every anchor of one image (Detectron2's
    `RetinaNet.label_anchors`): no sampling, no border filter.

    Args:
      anchors: `f32[A, 4]` xyxy anchors of all levels, concatenated p3..p7.
      gt_boxes: `f32[G, 4]` xyxy gt boxes (padded rows may hold anything).
      gt_classes: `i32[G]` contiguous ids in [0, K).
      gt_valid: `bool[G]`.
      iou_thresholds: Matcher thresholds, (0.4, 0.5).
      iou_labels: Matcher labels, (0, -1, 1).
      num_classes: K; the background label.
      assigner: a `jax_rcnn.research.Assigner` (None: Detectron2's Matcher on IoU).
      num_per_level: anchors per level (for the assigner, e.g. ATSS; empty: one level).

    Returns:
      `(gt_labels i32[A], matched_gt_boxes f32[A, 4])`: the matched gt's class for foreground
      anchors, K for background, -1 for ignored; zeros for the boxes when no gt is valid (every
      anchor is then background). Low-quality matches keep their own argmax gt, as in
      Detectron2 (`Matcher.set_low_quality_matches_` changes only the label).
    """
    gt_boxes, gt_valid, matched_idxs, labels = _match_anchors(
        anchors, gt_boxes, gt_valid, iou_thresholds, iou_labels, assigner, num_per_level
    )
    any_gt = jnp.any(gt_valid)
    gt_labels = jnp.where(labels == 1, gt_classes[matched_idxs], num_classes)
    gt_labels = jnp.where(labels == -1, -1, gt_labels)
    gt_labels = jnp.where(any_gt, gt_labels, num_classes).astype(jnp.int32)
    matched = jnp.where(any_gt, gt_boxes[matched_idxs], 0.0)
    return jax.lax.stop_gradient(gt_labels), jax.lax.stop_gradient(matched)


def _best_iou(gt_boxes: jax.Array, gt_valid: jax.Array, boxes: jax.Array) -> jax.Array:
    """`f32[P]` each box's largest IoU with a valid gt (0 without gt): a sampler's `quality`."""
    iou = jnp.where(gt_valid[:, None], box_ops.pairwise_iou(gt_boxes, boxes), 0.0)
    return jnp.max(iou, axis=0, initial=0.0)


def label_proposals(
    proposal_boxes: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    iou_thresholds: Sequence[float],
    iou_labels: Sequence[int],
    assigner=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The matching half of `label_and_sample_proposals` for one image.

    Returns:
      `(classes i32[P], matched_idxs i32[P], quality f32[P])`: class in [0, K) for foreground,
      K background, -1 ignored or invalid; matched gt row; best IoU with a valid gt.
    """
    gt_valid, proposal_valid = gt_valid.astype(bool), proposal_valid.astype(bool)
    gt_boxes = jnp.where(gt_valid[:, None], gt_boxes, 0.0)
    gt_classes = jnp.where(gt_valid, gt_classes, 0).astype(jnp.int32)
    matched_idxs, labels = (assigner or matching.iou_assigner)(
        proposal_boxes,
        gt_boxes,
        gt_valid,
        thresholds=tuple(iou_thresholds),
        labels=tuple(iou_labels),
        allow_low_quality_matches=False,
        num_per_level=(proposal_boxes.shape[0],),
    )
    classes = jnp.where(labels == 1, gt_classes[matched_idxs], num_classes)
    classes = jnp.where((labels == -1) | ~proposal_valid, -1, classes)
    return classes, matched_idxs, _best_iou(gt_boxes, gt_valid, proposal_boxes)


def sample_proposals(
    key: jax.Array,
    proposal_boxes: jax.Array,
    classes: jax.Array,
    matched_idxs: jax.Array,
    quality: jax.Array,
    hardness: jax.Array | None,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    batch_size_per_image: int,
    positive_fraction: float,
    sampler=None,
) -> ROITargets:
    """The sampling half of `label_and_sample_proposals` for one image (`label_proposals`
    outputs in; `hardness f32[P]` for loss-ranked samplers, else None)."""
    gt_valid = gt_valid.astype(bool)
    gt_boxes = jnp.where(gt_valid[:, None], gt_boxes, 0.0)
    if sampler is None:
        pos, neg = sampling.subsample_labels(
            key, classes, batch_size_per_image, positive_fraction, bg_label=num_classes
        )
    else:
        pos, neg = sampler(
            key,
            classes,
            quality,
            jnp.zeros_like(quality) if hardness is None else hardness,
            num_samples=batch_size_per_image,
            positive_fraction=positive_fraction,
            bg_label=num_classes,
        )
    num_slots = num_roi_slots(batch_size_per_image, proposal_boxes.shape[0])
    idx, valid = sampling.sampled_indices(pos, neg, num_slots)
    has_gt = jnp.any(gt_valid)
    gt_index = matched_idxs[idx]
    out = ROITargets(
        proposal_boxes=jnp.where(valid[:, None], proposal_boxes[idx], 0.0),
        gt_classes=jnp.where(valid, classes[idx], num_classes).astype(jnp.int32),
        gt_boxes=jnp.where(valid[:, None] & has_gt, gt_boxes[gt_index], 0.0),
        gt_index=gt_index,
        valid=valid,
        index=idx,
    )
    return jax.tree.map(jax.lax.stop_gradient, out)


def label_and_sample_proposals(
    key: jax.Array,
    proposal_boxes: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    iou_thresholds: Sequence[float],
    iou_labels: Sequence[int],
    batch_size_per_image: int,
    positive_fraction: float,
    assigner=None,
    sampler=None,
) -> ROITargets:
    """Matches the candidate proposals of one image to gt and samples the ROI-head batch.

    Args:
      key: PRNG key of this image, consumed by the sampler.
      proposal_boxes: `f32[P, 4]` candidates (RPN proposals, then the gt boxes when
        `PROPOSAL_APPEND_GT`; see `jax_rcnn.proposals.add_ground_truth_to_proposals`).
      proposal_valid: `bool[P]` real candidates.
      gt_boxes: `f32[G, 4]` xyxy (padded rows may hold anything).
      gt_classes: `i32[G]` contiguous class ids in [0, K).
      gt_valid: `bool[G]`.
      num_classes: K; background is class K.
      iou_thresholds: Matcher thresholds, (0.5,).
      iou_labels: Matcher labels, (0, 1).
      batch_size_per_image: ROIs sampled per image (512).
      positive_fraction: cap on the foreground share (0.25).
      assigner: a `jax_rcnn.research.Assigner` (None: Detectron2's Matcher on IoU).
      sampler: a `jax_rcnn.research.Sampler` without `uses_loss` (None: random).

    Returns:
      `ROITargets` with `R = num_roi_slots(batch_size_per_image, P)` slots, foreground first;
      no low-quality matches (Detectron2's ROI `Matcher(allow_low_quality_matches=False)`).

    Example:
      gt `[0, 0, 10, 10]` of class 2, candidates `[0, 0, 10, 10]`, `[0, 0, 10, 20]`, `[0, 0,
      10, 30]`: IoUs 1, 0.5, 0.33 give gt_classes 2, 2 (0.5 is foreground: `>=`), K.
    """
    classes, matched_idxs, quality = label_proposals(
        proposal_boxes,
        proposal_valid,
        gt_boxes,
        gt_classes,
        gt_valid,
        num_classes=num_classes,
        iou_thresholds=iou_thresholds,
        iou_labels=iou_labels,
        assigner=assigner,
    )
    return sample_proposals(
        key,
        proposal_boxes,
        classes,
        matched_idxs,
        quality,
        None,
        gt_boxes,
        gt_valid,
        num_classes=num_classes,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        sampler=sampler,
    )


def _boxes_in_gt_frame(rois: jax.Array, gt_boxes: jax.Array, size: int) -> jax.Array:
    """Maps ROIs into the `size x size` grid of their gt box: `(P - g.x1y1) * size / g.wh`."""
    origin = jnp.concatenate([gt_boxes[..., :2], gt_boxes[..., :2]], axis=-1)
    wh = gt_boxes[..., 2:] - gt_boxes[..., :2]
    # Only padded slots have empty gt boxes; a unit size keeps them finite.
    wh = jnp.where(wh > 0, wh, 1.0)
    scale = size / jnp.concatenate([wh, wh], axis=-1)
    return (rois - origin) * scale


def mask_targets(
    gt_masks: jax.Array,
    gt_boxes: jax.Array,
    rois: jax.Array,
    roi_gt_index: jax.Array,
    roi_valid: jax.Array,
    mask_size: int,
    *,
    backend: str = "auto",
) -> jax.Array:
    """Binary Mask R-CNN targets of a batch of foreground ROIs.

    Two gt mask representations, chosen by `gt_masks.dtype`:

    * `bool[B, G, Hm, Wm]`: full-image bitmasks in the resized-input frame (Detectron2
      `BitMasks`): target = ROIAlign(mask, roi, mask_size, aligned=True, sampling_ratio=0)
      >= 0.5, exactly `BitMasks.crop_and_resize`. Masks padded beyond the image (several image
      sizes in one batch) read zeros instead of the border clamp; boxes never reach that far
      except at the last pixel column/row, so the difference is confined there.
    * `u8[B, G, M, M]` (or float in [0, 255]): box-relative soft masks of
      `make_train_example`; the ROI is mapped into the gt box's `M x M` grid and the same
      ROIAlign is applied to `mask / 255` (`jax_rcnn.data.batching.mask_target_reference`).

    Args:
      gt_masks: see above.
      gt_boxes: `f32[B, G, 4]` xyxy gt boxes (used by the box-relative representation).
      rois: `f32[B, F, 4]` xyxy ROI boxes.
      roi_gt_index: `i32[B, F]` matched gt row of each ROI.
      roi_valid: `bool[B, F]`; other slots get an all-False target.
      mask_size: static output side (28 = 2 x the mask pooler resolution).
      backend: `jax_rcnn.kernels` backend of the ROIAlign.

    Returns:
      `bool[B, F, mask_size, mask_size]`.
    """
    num_images, num_gt = gt_masks.shape[:2]
    gt_index = jnp.clip(roi_gt_index, 0, num_gt - 1)
    rois = jnp.where(roi_valid[..., None], rois, 0.0)
    if gt_masks.dtype == jnp.bool_:
        masks = gt_masks
        boxes = rois
    else:
        masks = gt_masks.astype(jnp.float32) / 255.0
        matched = jnp.take_along_axis(gt_boxes, gt_index[..., None], axis=1)
        boxes = _boxes_in_gt_frame(rois, matched, gt_masks.shape[-1])
        boxes = jnp.where(roi_valid[..., None], boxes, 0.0)
    flat_index = (jnp.arange(num_images, dtype=jnp.int32)[:, None] * num_gt + gt_index).reshape(-1)
    soft = mask_ops.crop_and_resize(
        masks.reshape(num_images * num_gt, *masks.shape[2:]),
        jax.lax.stop_gradient(boxes.reshape(-1, 4)),
        flat_index,
        mask_size,
        backend=backend,
    )
    soft = soft.reshape(*rois.shape[:2], mask_size, mask_size)
    return (soft >= 0.5) & roi_valid[..., None, None]
