"""Training losses: RPN objectness/box, Fast R-CNN class/box, Mask R-CNN mask, RetinaNet.

**Parity:** reproduces Detectron2's `RPN.losses` (`proposal_generator/rpn.py`),
`FastRCNNOutputLayers.losses` / `box_reg_loss` (`roi_heads/fast_rcnn.py`) and `mask_rcnn_loss`
(`roi_heads/mask_head.py`), with their normalisers, which are easy to get wrong:

* `loss_rpn_cls`: BCE-with-logits **summed** over sampled anchors (label >= 0), and
  `loss_rpn_loc`: smooth-L1 summed over the 4 deltas of positive anchors; both divided by
  `batch_size_per_image * num_images` (256 x B), not by the number sampled;
* `loss_cls`: softmax cross-entropy, **mean** over the sampled ROIs of all images together;
* `loss_box_reg`: smooth-L1 over the foreground ROIs' gt-class deltas (weights 10, 10, 5, 5),
  summed and divided by the number of sampled ROIs (fg + bg) of all images;
* `loss_mask`: BCE-with-logits of the gt class's `M x M` mask logits, mean over fg x M x M;
* RetinaNet (`RetinaNet.losses`, fvcore `sigmoid_focal_loss`, `giou_loss`): focal loss summed
  over every non-ignored anchor x class (one-hot targets, background all zeros), box loss
  (smooth-L1 on the deltas, or GIoU on the decoded boxes) summed over foreground anchors, both
  divided by the caller's normaliser (Detectron2's EMA of the foreground count);
* box-regression loss types (`BBOX_REG_LOSS_TYPE` of the RPN, box head and RetinaNet) as
  Detectron2's `_dense_box_regression_loss` (`modeling/box_regression.py`): "smooth_l1" on the
  deltas, "giou" (fvcore), "diou", "ciou" (`layers/losses.py`) on the deltas decoded on the
  anchors / proposals, summed over the foreground; `box_regression_loss`. CIoU floors heights
  at eps in its aspect term (finite on zero-area boxes where Detectron2 gives NaN).

Elementwise formulas follow PyTorch's: BCE is `softplus(x) - t x` (PyTorch's stable form; its
gradient `sigmoid(x) - t` has no cancellation), smooth-L1 is
`|x|` for `beta < 1e-5` (fvcore) and `0.5 x^2 / beta` below `beta` otherwise. Loss weights
(`MODEL.RPN.LOSS_WEIGHT`, `BBOX_REG_LOSS_WEIGHT`) multiply the results as in Detectron2.
Deviations (representation only): variable-length sets are padded with a validity mask, and an
empty set gives a loss of exactly 0 with zero gradients (Detectron2 returns `x.sum() * 0` for
an empty mask batch and 0 for an empty ROI batch) instead of NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jax_rcnn import boxes as box_ops


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise smooth-L1 of a difference (fvcore `smooth_l1_loss`, no reduction).

    Args:
      x: `f32[...]` prediction minus target.
      beta: static; L1 for `beta < 1e-5`, otherwise quadratic `0.5 x^2 / beta` for
        `|x| < beta` and `|x| - 0.5 beta` beyond.

    Returns:
      `f32[...]`. Example: beta 1, x = (0.5, 2) -> (0.125, 1.5); beta 0 -> (0.5, 2).
    """
    n = jnp.abs(x)
    if beta < 1e-5:
        return n
    return jnp.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta)


def sigmoid_bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy on logits, PyTorch's formula (no reduction).

    Args:
      logits: `f32[...]`.
      targets: `f32|bool[...]` in [0, 1].

    Returns:
      `f32[...]` `softplus(x) - t x`; e.g. x = 0 gives log 2 for either target.
      Written so that the gradient, `sigmoid(x) - t`, has no cancellation: the form
      `(1 - t) x - log_sigmoid(x)` differentiates to `(1 - t) - sigmoid(-x)`, which loses all
      float32 digits of the tiny gradients of confident negatives (x << 0, the bulk of the
      RPN's and RetinaNet's anchors).
    """
    t = targets.astype(logits.dtype)
    # softplus = logaddexp(x, 0), whose derivative JAX evaluates as exp(x - softplus(x)).
    return jax.nn.softplus(logits) - t * logits


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-row softmax cross-entropy (PyTorch `cross_entropy`, no reduction).

    Args:
      logits: `f32[..., C]`.
      labels: `i32[...]` in [0, C) (other values are clipped; mask them out).

    Returns:
      `f32[...]` `-log_softmax(logits)[label]`.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.clip(labels, 0, logits.shape[-1] - 1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def rpn_losses(
    pred_objectness_logits: jax.Array,
    pred_anchor_deltas: jax.Array,
    gt_labels: jax.Array,
    gt_anchor_deltas: jax.Array,
    *,
    batch_size_per_image: int,
    smooth_l1_beta: float = 0.0,
    loss_weight: float = 1.0,
    bbox_reg_loss_weight: float = 1.0,
    box_reg_loss="smooth_l1",
    anchors: jax.Array | None = None,
    matched_gt_boxes: jax.Array | None = None,
    box2box: box_ops.Box2BoxTransform | None = None,
) -> dict[str, jax.Array]:
    """Detectron2 `RPN.losses` for a batch.

    Args:
      pred_objectness_logits: `f32[B, A]` all levels concatenated.
      pred_anchor_deltas: `f32[B, A, 4]`.
      gt_labels: `i32[B, A]` 1 / 0 / -1 (`jax_rcnn.targets.label_and_sample_anchors`).
      gt_anchor_deltas: `f32[B, A, 4]` `get_deltas(anchor, matched gt)`, weights (1, 1, 1, 1);
        read only where `gt_labels == 1`.
      batch_size_per_image: the normaliser per image (`MODEL.RPN.BATCH_SIZE_PER_IMAGE`).
      smooth_l1_beta: `MODEL.RPN.SMOOTH_L1_BETA` (0: L1).
      loss_weight: `MODEL.RPN.LOSS_WEIGHT`, multiplies both losses.
      bbox_reg_loss_weight: `MODEL.RPN.BBOX_REG_LOSS_WEIGHT`, multiplies `loss_rpn_loc`.
      box_reg_loss: `MODEL.RPN.BBOX_REG_LOSS_TYPE` ("smooth_l1", "giou", "diou", "ciou") or a
        `BOX_REG_LOSSES`-style function; anything but "smooth_l1" reads the next three.
      anchors: `f32[A, 4]` xyxy (the IoU losses decode the predicted deltas on them).
      matched_gt_boxes: `f32[B, A, 4]` matched gt box per anchor.
      box2box: the RPN's box coder.

    Returns:
      `{"loss_rpn_cls": f32[], "loss_rpn_loc": f32[]}`, each the sum divided by
      `batch_size_per_image * B`.
    """
    gt_labels = jax.lax.stop_gradient(gt_labels)
    gt_anchor_deltas = jax.lax.stop_gradient(gt_anchor_deltas)
    normalizer = float(batch_size_per_image * pred_objectness_logits.shape[0])
    pos = gt_labels == 1
    if isinstance(box_reg_loss, str) and box_reg_loss == "smooth_l1":
        loc = smooth_l1(pred_anchor_deltas - gt_anchor_deltas, smooth_l1_beta)
        loc_sum = jnp.sum(jnp.where(pos[..., None], loc, 0.0))
    else:
        if anchors is None or matched_gt_boxes is None or box2box is None:
            raise ValueError(
                f"box_reg_loss {box_reg_loss!r} needs anchors, matched_gt_boxes, box2box"
            )
        loc_sum = box_regression_loss(
            pred_anchor_deltas,
            anchors[None],
            matched_gt_boxes,
            pos,
            box2box=box2box,
            box_reg_loss=box_reg_loss,
            smooth_l1_beta=smooth_l1_beta,
        )
    bce = sigmoid_bce_with_logits(pred_objectness_logits, pos)
    cls_sum = jnp.sum(jnp.where(gt_labels >= 0, bce, 0.0))
    return {
        "loss_rpn_cls": cls_sum / normalizer * loss_weight,
        "loss_rpn_loc": loc_sum / normalizer * (loss_weight * bbox_reg_loss_weight),
    }


def fast_rcnn_losses(
    cls_logits: jax.Array,
    box_deltas: jax.Array,
    proposal_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_boxes: jax.Array,
    valid: jax.Array,
    *,
    box2box: box_ops.Box2BoxTransform,
    smooth_l1_beta: float = 0.0,
    bbox_reg_loss_weight: float = 1.0,
    box_reg_loss="smooth_l1",
    cls_loss=None,
) -> dict[str, jax.Array]:
    """Detectron2 `FastRCNNOutputLayers.losses` over the sampled ROIs of all images.

    Args:
      cls_logits: `f32[..., K+1]` (e.g. `[B, R, K+1]`), last column background.
      box_deltas: `f32[..., 4K]` class-specific or `f32[..., 4]` class-agnostic.
      proposal_boxes: `f32[..., 4]` xyxy sampled ROI boxes.
      gt_classes: `i32[...]` in [0, K], K = background.
      gt_boxes: `f32[..., 4]` matched gt boxes (read only for foreground).
      valid: `bool[...]` sampled ROIs; padding slots are ignored.
      box2box: the box-head transform (weights (10, 10, 5, 5)).
      smooth_l1_beta: `MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`.
      bbox_reg_loss_weight: `MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT`.
      box_reg_loss: `MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE` or a `BOX_REG_LOSSES`-style
        function (the IoU losses decode the deltas on the proposals, as Detectron2).
      cls_loss: per-ROI classification loss `(f32[..., K+1], i32[...]) -> f32[...]`; None:
        softmax cross-entropy.

    Returns:
      `{"loss_cls": f32[], "loss_box_reg": f32[]}`; both divide by the total number of valid
      ROIs (at least 1), so images with more sampled ROIs weigh more, as in Detectron2.
    """
    num_classes = cls_logits.shape[-1] - 1
    gt_classes = jax.lax.stop_gradient(gt_classes)
    num_valid = jnp.maximum(jnp.sum(valid), 1).astype(cls_logits.dtype)
    ce = (cls_loss or softmax_cross_entropy)(cls_logits, gt_classes)
    loss_cls = jnp.sum(jnp.where(valid, ce, 0.0)) / num_valid

    fg = valid & (gt_classes >= 0) & (gt_classes < num_classes)
    if box_deltas.shape[-1] == 4:
        fg_deltas = box_deltas
    else:
        per_class = box_deltas.reshape(*box_deltas.shape[:-1], num_classes, 4)
        cls = jnp.clip(gt_classes, 0, num_classes - 1)
        fg_deltas = jnp.take_along_axis(per_class, cls[..., None, None], axis=-2)[..., 0, :]
    if isinstance(box_reg_loss, str) and box_reg_loss == "smooth_l1":
        target = jax.lax.stop_gradient(box2box.get_deltas(proposal_boxes, gt_boxes))
        reg = smooth_l1(fg_deltas - target, smooth_l1_beta)
        loss_box_reg = jnp.sum(jnp.where(fg[..., None], reg, 0.0)) / num_valid
    else:
        reg_sum = box_regression_loss(
            fg_deltas,
            proposal_boxes,
            gt_boxes,
            fg,
            box2box=box2box,
            box_reg_loss=box_reg_loss,
            smooth_l1_beta=smooth_l1_beta,
        )
        loss_box_reg = reg_sum / num_valid
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg * bbox_reg_loss_weight}


def mask_rcnn_loss(
    mask_logits: jax.Array,
    gt_classes: jax.Array,
    mask_targets: jax.Array,
    fg_valid: jax.Array,
    *,
    loss_weight: float = 1.0,
) -> jax.Array:
    """Detectron2 `mask_rcnn_loss` over the foreground ROIs of all images.

    Args:
      mask_logits: `f32[..., M, M, K]` (`f32[..., M, M, 1]` class-agnostic), NHWC as the
        mask head returns them.
      gt_classes: `i32[...]` class of each foreground ROI, in [0, K).
      mask_targets: `bool[..., M, M]` (`jax_rcnn.targets.mask_targets`).
      fg_valid: `bool[...]` real foreground ROIs.
      loss_weight: multiplies the loss.

    Returns:
      `f32[]` BCE-with-logits of the gt class's logits, mean over fg x M x M elements; 0 when
      there is no foreground ROI.
    """
    if mask_logits.shape[-1] == 1:
        logits = mask_logits[..., 0]
    else:
        cls = jnp.clip(jax.lax.stop_gradient(gt_classes), 0, mask_logits.shape[-1] - 1)
        idx = jnp.broadcast_to(cls[..., None, None, None], (*mask_logits.shape[:-1], 1))
        logits = jnp.take_along_axis(mask_logits, idx, axis=-1)[..., 0]
    bce = sigmoid_bce_with_logits(logits, jax.lax.stop_gradient(mask_targets))
    side = mask_logits.shape[-3] * mask_logits.shape[-2]
    count = jnp.maximum(jnp.sum(fg_valid) * side, 1).astype(logits.dtype)
    return jnp.sum(jnp.where(fg_valid[..., None, None], bce, 0.0)) / count * loss_weight


def sigmoid_focal_loss(
    logits: jax.Array, targets: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Elementwise focal loss (fvcore `sigmoid_focal_loss`, no reduction).

    Args:
      logits: `f32[...]`.
      targets: `f32|bool[...]` in {0, 1}.
      alpha: weight of the positives (`1 - alpha` for the negatives); < 0 disables it.
      gamma: focusing exponent.

    Returns:
      `f32[...]` `BCE(x, t) * (1 - p_t) ** gamma * alpha_t`. Example: x = 0, t = 1, alpha
      0.25, gamma 2 -> log 2 * 0.25 * 0.25 = 0.0433. The gradient flows through `(1 - p_t)`.
    """
    t = targets.astype(logits.dtype)
    p = jax.nn.sigmoid(logits)
    p_t = p * t + (1.0 - p) * (1.0 - t)
    loss = sigmoid_bce_with_logits(logits, t) * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
    return loss


def _iou_terms(boxes1: jax.Array, boxes2: jax.Array, eps: float):
    """Shared terms of the IoU losses: coordinates, intersection, union (+ eps), IoU and the
    smallest enclosing box, with fvcore's / Detectron2's arithmetic."""
    x1, y1, x2, y2 = jnp.moveaxis(boxes1, -1, 0)
    x1g, y1g, x2g, y2g = jnp.moveaxis(boxes2, -1, 0)
    iw = jnp.minimum(x2, x2g) - jnp.maximum(x1, x1g)
    ih = jnp.minimum(y2, y2g) - jnp.maximum(y1, y1g)
    inter = jnp.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    enclosing = (
        jnp.minimum(x1, x1g),
        jnp.minimum(y1, y1g),
        jnp.maximum(x2, x2g),
        jnp.maximum(y2, y2g),
    )
    return (x1, y1, x2, y2), (x1g, y1g, x2g, y2g), union, iou, enclosing


def giou_loss(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Generalized IoU loss `1 - GIoU` (fvcore `giou_loss`, no reduction).

    Args:
      boxes1: `f32[..., 4]` xyxy predictions.
      boxes2: `f32[..., 4]` xyxy targets.
      eps: added to the union and the enclosing area, as fvcore does.

    Returns:
      `f32[...]`, 0 for identical boxes, up to 2 for far-apart ones. Example: [0, 0, 1, 1]
      against [1, 0, 2, 1] -> IoU 0, enclosing area 2, union 2 -> loss 1.
    """
    _, _, union, iou, (xc1, yc1, xc2, yc2) = _iou_terms(boxes1, boxes2, eps)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return 1.0 - (iou - (area_c - union) / (area_c + eps))


def _centre_distance(b1, b2, enclosing, eps):
    """Squared centre distance over the squared enclosing diagonal (+ eps), DIoU's penalty."""
    x1, y1, x2, y2 = b1
    x1g, y1g, x2g, y2g = b2
    xc1, yc1, xc2, yc2 = enclosing
    diag = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
    dist = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    return dist / diag


def diou_loss(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Distance-IoU loss `1 - IoU + d^2 / c^2` (Detectron2 `layers/losses.py:diou_loss`).

    Args:
      boxes1: `f32[..., 4]` xyxy predictions.
      boxes2: `f32[..., 4]` xyxy targets.
      eps: added to the union and the squared enclosing diagonal, as Detectron2 does.

    Returns:
      `f32[...]`; d is the distance of the box centres, c the enclosing box's diagonal.
      Example: [0, 0, 1, 1] against [1, 0, 2, 1] -> IoU 0, d^2 1, c^2 5 -> loss 1.2.
    """
    b1, b2, _, iou, enclosing = _iou_terms(boxes1, boxes2, eps)
    return 1.0 - iou + _centre_distance(b1, b2, enclosing, eps)


def ciou_loss(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Complete-IoU loss `1 - IoU + d^2 / c^2 + alpha v` (Detectron2 `ciou_loss`).

    Args:
      boxes1: `f32[..., 4]` xyxy predictions.
      boxes2: `f32[..., 4]` xyxy targets.
      eps: as `diou_loss`; also the floor of the heights in the aspect term.

    Returns:
      `f32[...]`; `v = 4 / pi^2 (atan(w_g / h_g) - atan(w / h))^2`, `alpha = v / (1 - IoU + v
      + eps)` without gradient (Detectron2's `no_grad`). Deviation: heights are floored at
      `eps` in the aspect term, so a zero-area box gives a finite loss where Detectron2's is
      NaN (0 / 0); for every box with height > eps the numbers are Detectron2's.
    """
    b1, b2, _, iou, enclosing = _iou_terms(boxes1, boxes2, eps)
    x1, y1, x2, y2 = b1
    x1g, y1g, x2g, y2g = b2
    ratio_gt = jnp.arctan((x2g - x1g) / jnp.maximum(y2g - y1g, eps))
    ratio = jnp.arctan((x2 - x1) / jnp.maximum(y2 - y1, eps))
    v = (4 / math.pi**2) * (ratio_gt - ratio) ** 2
    alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
    return 1.0 - iou + _centre_distance(b1, b2, enclosing, eps) + alpha * v


def smooth_l1_box_loss(pred_deltas, target_deltas, pred_boxes, target_boxes, *, beta):
    """`box_reg_loss` "smooth_l1": smooth-L1 of the deltas summed over the 4 coordinates."""
    del pred_boxes, target_boxes
    return jnp.sum(smooth_l1(pred_deltas - target_deltas, beta), axis=-1)


def _on_boxes(fn):
    def loss(pred_deltas, target_deltas, pred_boxes, target_boxes, *, beta):
        del pred_deltas, target_deltas, beta
        return fn(pred_boxes, target_boxes)

    loss.__name__ = f"{fn.__name__}_box_loss"
    loss.__doc__ = f"`box_reg_loss` on the decoded boxes: `{fn.__name__}` (beta unused)."
    return loss


# The built-in box-regression losses (Detectron2's `BBOX_REG_LOSS_TYPE` values), in the
# `jax_rcnn.research.BoxRegLoss` signature: per box, `f32[...]`.
BOX_REG_LOSSES = {
    "smooth_l1": smooth_l1_box_loss,
    "giou": _on_boxes(giou_loss),
    "diou": _on_boxes(diou_loss),
    "ciou": _on_boxes(ciou_loss),
}


def _box_reg_loss_fn(box_reg_loss):
    if callable(box_reg_loss):
        return box_reg_loss
    if box_reg_loss not in BOX_REG_LOSSES:
        raise ValueError(
            f"bbox_reg_loss_type must be one of {tuple(BOX_REG_LOSSES)} or a function, "
            f"got {box_reg_loss!r}"
        )
    return BOX_REG_LOSSES[box_reg_loss]


def box_regression_loss(
    pred_deltas: jax.Array,
    src_boxes: jax.Array,
    gt_boxes: jax.Array,
    fg: jax.Array,
    *,
    box2box,
    box_reg_loss="smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> jax.Array:
    """Detectron2 `_dense_box_regression_loss`: a box loss summed over the foreground.

    Args:
      pred_deltas: `f32[..., 4]` predicted deltas (one set per source box).
      src_boxes: `f32[..., 4]` xyxy anchors or proposals, broadcastable with `pred_deltas`.
      gt_boxes: `f32[..., 4]` xyxy matched gt boxes (read only where `fg`).
      fg: `bool[...]` the boxes the loss sums over.
      box2box: the box coder (`get_deltas`, `apply_deltas`).
      box_reg_loss: a `BOX_REG_LOSSES` name ("smooth_l1" on the deltas; "giou", "diou",
        "ciou" on the decoded boxes) or a function of that signature.
      smooth_l1_beta: passed to the loss as `beta` (0: L1).

    Returns:
      `f32[]` the sum over the foreground. Background rows are replaced by a unit box before
      the loss, so their garbage never reaches the gradient.
    """
    fn = _box_reg_loss_fn(box_reg_loss)
    src_boxes = jnp.broadcast_to(src_boxes, pred_deltas.shape)
    target = jax.lax.stop_gradient(box2box.get_deltas(src_boxes, gt_boxes))
    unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], pred_deltas.dtype)
    pred_boxes = jnp.where(fg[..., None], box2box.apply_deltas(pred_deltas, src_boxes), unit)
    gt_boxes = jax.lax.stop_gradient(jnp.where(fg[..., None], gt_boxes, unit))
    per_box = fn(pred_deltas, target, pred_boxes, gt_boxes, beta=smooth_l1_beta)
    return jnp.sum(jnp.where(fg, per_box, 0.0))


def retinanet_losses(
    cls_logits: jax.Array,
    box_deltas: jax.Array,
    anchors: jax.Array,
    gt_labels: jax.Array,
    matched_gt_boxes: jax.Array,
    normalizer: jax.Array,
    *,
    box2box: box_ops.Box2BoxTransform,
    focal_alpha: float,
    focal_gamma: float,
    bbox_reg_loss_type: str,
    smooth_l1_beta: float,
) -> dict[str, jax.Array]:
    """Detectron2 `RetinaNet.losses` for a batch, given the normaliser.

    Args:
      cls_logits: `f32[B, A, K]` all levels concatenated.
      box_deltas: `f32[B, A, 4]`.
      anchors: `f32[A, 4]` xyxy.
      gt_labels: `i32[B, A]`: class in [0, K), K = background, -1 = ignored
        (`jax_rcnn.targets.label_anchors_dense`).
      matched_gt_boxes: `f32[B, A, 4]` read only for foreground anchors.
      normalizer: `f32[]` divisor of both losses (Detectron2's EMA of the foreground count).
      box2box: the box coder (`MODEL.RETINANET.BBOX_REG_WEIGHTS`).
      focal_alpha: `FOCAL_LOSS_ALPHA`.
      focal_gamma: `FOCAL_LOSS_GAMMA`.
      bbox_reg_loss_type: "smooth_l1" (on deltas), "giou", "diou", "ciou" (on decoded
        boxes), or a `BOX_REG_LOSSES`-style function.
      smooth_l1_beta: `SMOOTH_L1_LOSS_BETA` (0: L1).

    Returns:
      `{"loss_cls": f32[], "loss_box_reg": f32[]}`.
    """
    gt_labels = jax.lax.stop_gradient(gt_labels)
    matched_gt_boxes = jax.lax.stop_gradient(matched_gt_boxes)
    num_classes = cls_logits.shape[-1]
    fg = (gt_labels >= 0) & (gt_labels != num_classes)
    onehot = gt_labels[..., None] == jnp.arange(num_classes)
    focal = sigmoid_focal_loss(cls_logits, onehot, alpha=focal_alpha, gamma=focal_gamma)
    cls_sum = jnp.sum(jnp.where((gt_labels >= 0)[..., None], focal, 0.0))
    if isinstance(bbox_reg_loss_type, str) and bbox_reg_loss_type == "smooth_l1":
        target = box2box.get_deltas(anchors[None], matched_gt_boxes)
        box = smooth_l1(box_deltas - target, smooth_l1_beta)
        box_sum = jnp.sum(jnp.where(fg[..., None], box, 0.0))
    else:
        box_sum = box_regression_loss(
            box_deltas,
            anchors[None],
            matched_gt_boxes,
            fg,
            box2box=box2box,
            box_reg_loss=bbox_reg_loss_type,
            smooth_l1_beta=smooth_l1_beta,
        )
    return {"loss_cls": cls_sum / normalizer, "loss_box_reg": box_sum / normalizer}
