"""The ROI-head stages of two-stage detectors: sample, pool, box head, mask head.

**Parity:** Detectron2's `StandardROIHeads` (`modeling/roi_heads/roi_heads.py`):
`label_and_sample_proposals` (proposals matched to gt, `BATCH_SIZE_PER_IMAGE` ROIs per image,
foreground first here), `ROIPooler` (ROIAlignV2 on the FPN level of each box),
`FastRCNNOutputLayers.losses` / `inference` (softmax, class-specific decoding, per-class NMS)
and the mask head trained on the foreground ROIs and run on the final detections.

Speed (same numbers as Detectron2, less padding work): the mask head runs on the first n
foreground / detection slots that hold every image's valid ones (`run_on_first_slots`), under
`jax.checkpoint` in training so reverse mode keeps only the chosen branch's residuals.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_rcnn import long_tail, poolers, postprocess, proposals, research, targets
from jax_rcnn import losses as loss_ops
from jax_rcnn.meta_arch.common import Networks, feature_stride, run_on_first_slots


def pool(config, features: dict[str, jax.Array], boxes: jax.Array, head, backend: str):
    """`boxes f32[B, R, 4]` pooled on `config.model.roi_heads.in_features` with the pooler of
    `head` (`model.roi_box_head` or `model.roi_mask_head`: its `pooler_type`, resolution and
    sampling ratio): `f32[B, R, S, S, C]`.

    One input feature (C4's res4, DC5's res5, both stride 16) takes every box at scale
    1/stride, as Detectron2's single-level `ROIPooler`."""
    names = tuple(config.model.roi_heads.in_features)
    stride = feature_stride(names[0], config.model.resnets.res5_dilation)
    return poolers.roi_pool(
        [features[n] for n in names],
        boxes,
        min_level=stride.bit_length() - 1,
        output_size=head.pooler_resolution,
        sampling_ratio=head.pooler_sampling_ratio,
        backend=backend,
        pooler_type=head.pooler_type,
    )


def sample_rois(
    config,
    props: proposals.Proposals,
    gt: dict[str, jax.Array],
    key: jax.Array,
    *,
    nets: Networks | None = None,
    features=None,
    backend: str = "auto",
) -> targets.ROITargets:
    """Training ROIs: gt appended to the proposals (`PROPOSAL_APPEND_GT`), matched to gt by
    `roi_heads.matcher` and `roi_heads.batch_size_per_image` sampled per image by
    `roi_heads.sampler`, foreground first (`[B, R]` fields).

    A loss-ranked sampler (`research.uses_loss`, e.g. "ohem") gets each candidate's detached
    box-head loss as `hardness`: the box head runs once more, on every candidate, without
    gradient and without updating BN statistics; it needs `nets`, `features` and `backend`."""
    rh = config.model.roi_heads
    gt_boxes, gt_classes, gt_valid = gt["gt_boxes"], gt["gt_classes"], gt["gt_valid"]
    if rh.proposal_append_gt:
        props = proposals.add_ground_truth_to_proposals(props, gt_boxes, gt_valid)
    sampler = research.get(rh, "sampler", "random")
    label = functools.partial(
        targets.label_proposals,
        num_classes=rh.num_classes,
        iou_thresholds=rh.iou_thresholds,
        iou_labels=rh.iou_labels,
        assigner=research.get(rh, "matcher", "iou"),
    )
    classes, matched_idxs, quality = jax.vmap(label)(
        props.boxes, props.valid, gt_boxes, gt_classes, gt_valid
    )
    hardness = None
    if research.uses_loss(sampler):
        if nets is None or features is None:
            raise ValueError(f"the ROI sampler {rh.sampler!r} ranks by loss: pass nets, features")
        hardness = candidate_losses(
            config, nets, features, props.boxes, classes, matched_idxs, gt, backend
        )
    sample = functools.partial(
        targets.sample_proposals,
        num_classes=rh.num_classes,
        batch_size_per_image=rh.batch_size_per_image,
        positive_fraction=rh.positive_fraction,
        sampler=sampler,
    )
    keys = jax.random.split(key, gt_boxes.shape[0])
    return jax.vmap(sample)(
        keys, props.boxes, classes, matched_idxs, quality, hardness, gt_boxes, gt_valid
    )


def candidate_losses(config, nets: Networks, features, boxes, classes, matched_idxs, gt, backend):
    """Detached per-candidate box-head loss (classification + box regression), OHEM's ranking.

    Args:
      config: the jax_rcnn config.
      nets: the bound networks (their mutable state is restored afterwards).
      features: the feature dict.
      boxes: `f32[B, P, 4]` candidates.
      classes: `i32[B, P]` from `targets.label_proposals` (-1: not sampleable).
      matched_idxs: `i32[B, P]` matched gt rows.
      gt: `gt_boxes f32[B, G, 4]`, ...
      backend: kernel backend.

    Returns:
      `f32[B, P]`, the `roi_box_head.cls_loss` plus (foreground) the `bbox_reg_loss_type`
      loss of each candidate; 0 where `classes < 0`.
    """
    bh = config.model.roi_box_head
    num_classes = config.model.roi_heads.num_classes
    state = nets.mutable_state()
    cls_logits, box_deltas = nets.box_head(pool(config, features, boxes, bh, backend))
    nets.set_mutable_state(state)
    cls_logits, box_deltas = jax.lax.stop_gradient((cls_logits, box_deltas))
    labels = jnp.clip(classes, 0, num_classes)
    cls = cls_loss_fn(config)(cls_logits, labels)
    fg = (classes >= 0) & (classes < num_classes)
    if box_deltas.shape[-1] != 4:
        per_class = box_deltas.reshape(*box_deltas.shape[:-1], num_classes, 4)
        idx = jnp.clip(classes, 0, num_classes - 1)[..., None, None]
        box_deltas = jnp.take_along_axis(per_class, idx, axis=-2)[..., 0, :]
    gt_boxes = jnp.take_along_axis(gt["gt_boxes"], matched_idxs[..., None], axis=1)
    coder = research.box_coder(bh)
    unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], boxes.dtype)
    safe_gt = jnp.where(fg[..., None], gt_boxes, unit)
    pred_boxes = jnp.where(fg[..., None], coder.apply_deltas(box_deltas, boxes), unit)
    box_fn = research.box_reg_loss(bh)
    box_fn = loss_ops.BOX_REG_LOSSES[box_fn] if isinstance(box_fn, str) else box_fn
    reg = box_fn(
        box_deltas, coder.get_deltas(boxes, safe_gt), pred_boxes, safe_gt, beta=bh.smooth_l1_beta
    )
    return jnp.where(classes >= 0, cls + jnp.where(fg, reg, 0.0), 0.0)


def box_losses(config, nets: Networks, features, rois: targets.ROITargets, backend: str, key=None):
    """Box head on the sampled ROIs: `{"loss_cls", "loss_box_reg"}` (Fast R-CNN losses);
    `key` draws the federated-loss classes (`roi_box_head.use_fed_loss`)."""
    pooled = pool(config, features, rois.proposal_boxes, config.model.roi_box_head, backend)
    cls_logits, box_deltas = nets.box_head(pooled)
    return fast_rcnn_losses(config, cls_logits, box_deltas, rois, key)


def cls_loss_fn(config, gt_classes=None, roi_valid=None, key=None):
    """The box head's per-ROI classification loss `(f32[..., K+1], i32[...]) -> f32[...]`.

    `roi_box_head.use_sigmoid_ce`: Detectron2's sigmoid cross-entropy, restricted with
    `use_fed_loss` to the federated class subset of `gt_classes` / `roi_valid` (`i32[B, R]`,
    `bool[B, R]`, drawn with `key`; `jax_rcnn.long_tail`); otherwise `roi_box_head.cls_loss`.
    """
    bh = config.model.roi_box_head
    if not bh.get("use_sigmoid_ce", False):
        return research.get(bh, "cls_loss", "softmax_ce")
    if not bh.get("use_fed_loss", False) or gt_classes is None:
        return long_tail.sigmoid_ce_per_roi
    weights = fed_loss_weights(config)
    if key is None:
        raise ValueError("roi_box_head.use_fed_loss draws classes: the loss needs a PRNG key")
    mask = long_tail.fed_loss_classes(
        key,
        gt_classes.reshape(-1),
        roi_valid.reshape(-1),
        jnp.asarray(weights),
        int(bh.fed_loss_num_classes),
    )
    return lambda logits, labels: long_tail.sigmoid_ce_per_roi(logits, labels, mask)


def fed_loss_weights(config) -> np.ndarray:
    """f32[K] federated-loss sampling weights from `roi_box_head.fed_loss_image_counts`
    (filled from the training data by `train.py`; `long_tail.fed_loss_class_weights`).

    Raises:
      ValueError: the counts are missing or not one per class.
    """
    bh = config.model.roi_box_head
    counts = tuple(bh.get("fed_loss_image_counts", ()))
    k = config.model.roi_heads.num_classes
    if len(counts) != k:
        raise ValueError(
            f"config.model.roi_box_head.fed_loss_image_counts has {len(counts)} entries, the "
            f"model has {k} classes: the federated loss needs each class's training image count "
            "(train.py fills it from the training data when empty)"
        )
    return long_tail.fed_loss_class_weights(np.array(counts), float(bh.fed_loss_freq_weight_power))


def class_probs(config, cls_logits: jax.Array) -> jax.Array:
    """`FastRCNNOutputLayers.predict_probs`: softmax, or sigmoid with
    `roi_box_head.use_sigmoid_ce`; `f32[..., K+1]`, background last."""
    if config.model.roi_box_head.get("use_sigmoid_ce", False):
        return long_tail.sigmoid_class_probs(cls_logits)
    return jax.nn.softmax(cls_logits, axis=-1)


def fast_rcnn_losses(config, cls_logits, box_deltas, rois: targets.ROITargets, key=None):
    """`FastRCNNOutputLayers.losses` of the predictor outputs on the sampled ROIs.

    Args:
      config: the jax_rcnn config (`model.roi_box_head`).
      cls_logits: `f32[B, R, K+1]`.
      box_deltas: `f32[B, R, 4K]` (or `[B, R, 4]` class-agnostic).
      rois: `sample_rois` output, `[B, R]`.
      key: PRNG key of the federated-loss draw (only with `roi_box_head.use_fed_loss`).

    Returns:
      `{"loss_cls": f32[], "loss_box_reg": f32[]}`.
    """
    bh = config.model.roi_box_head
    return loss_ops.fast_rcnn_losses(
        cls_logits,
        box_deltas,
        rois.proposal_boxes,
        rois.gt_classes,
        rois.gt_boxes,
        rois.valid,
        box2box=research.box_coder(bh),
        smooth_l1_beta=bh.smooth_l1_beta,
        bbox_reg_loss_weight=bh.bbox_reg_loss_weight,
        box_reg_loss=research.box_reg_loss(bh),
        cls_loss=cls_loss_fn(config, rois.gt_classes, rois.valid, key),
    )


def detect_boxes(
    config, nets: Networks, features, props: proposals.Proposals, image_sizes, backend: str
) -> postprocess.Detections:
    """Box head on the pooled proposals -> per-class decoded, thresholded, NMS'd detections.

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
    pooled = pool(config, features, props.boxes, config.model.roi_box_head, backend)
    cls_logits, box_deltas = nets.box_head(pooled)
    return box_detections(config, cls_logits, box_deltas, props, image_sizes, backend)


def box_detections(
    config, cls_logits, box_deltas, props: proposals.Proposals, image_sizes, backend: str
) -> postprocess.Detections:
    """`FastRCNNOutputLayers.inference`: softmax (sigmoid with `use_sigmoid_ce`), per-class
    decoding, threshold, per-class NMS.

    Args:
      config: the jax_rcnn config.
      cls_logits: `f32[B, P, K+1]` of the proposals.
      box_deltas: `f32[B, P, 4K]` (or `[B, P, 4]` class-agnostic).
      props: `proposals.Proposals` (P slots).
      image_sizes: `i32[B, 2]`.
      backend: kernel backend.

    Returns:
      `postprocess.Detections` with `config.test.detections_per_image` slots, resized frame.
    """
    m = config.model
    box2box = research.box_coder(m.roi_box_head)
    return postprocess.fast_rcnn_inference(
        box2box.apply_deltas(box_deltas, props.boxes),
        class_probs(config, cls_logits),
        props.valid,
        image_sizes,
        score_thresh=m.roi_heads.score_thresh_test,
        nms_thresh=m.roi_heads.nms_thresh_test,
        topk_per_image=config.test.detections_per_image,
        backend=backend,
        nms=research.get(m.roi_heads, "test_nms", "nms"),
    )


def mask_probs(config, nets: Networks, features, dets: postprocess.Detections, backend):
    """Sigmoid mask of each detection's class, `f32[B, D, M, M]` (0 in invalid slots).

    Detectron2 runs the mask head on the detections only; with D static slots (100 by default)
    most are usually padding, and the head is ~90 GFLOP at D=100 for R50-FPN. Valid detections
    come first (sorted by score), so the head runs on the first n slots, n the smallest of
    `FIRST_SLOT_SIZES` (or D) holding every image's valid detections: same masks, static
    shapes, one `lax.switch` branch per size.
    """

    def mask_logits(boxes):
        return nets.mask_head(pool(config, features, boxes, config.model.roi_mask_head, backend))

    return predicted_mask_probs(dets, mask_logits)


def predicted_mask_probs(dets: postprocess.Detections, mask_logits) -> jax.Array:
    """Sigmoid of each detection's class mask, run on the first slots holding every image's
    valid detections (`run_on_first_slots`).

    Args:
      dets: detections, D slots (valid ones first).
      mask_logits: `boxes f32[B, n, 4] -> f32[B, n, M, M, K]` (K = 1: class-agnostic).

    Returns:
      `f32[B, D, M, M]`, 0 in invalid slots.
    """
    num_slots = dets.boxes.shape[1]

    def run_first(n):
        def branch(boxes, classes):
            logits = mask_logits(boxes[:, :n])  # [B, n, M, M, K]
            cls = 0 if logits.shape[-1] == 1 else classes[:, :n]
            cls = jnp.broadcast_to(jnp.asarray(cls), classes[:, :n].shape)
            logits = jnp.take_along_axis(logits, cls[:, :, None, None, None], axis=-1)
            probs = jax.nn.sigmoid(logits[..., 0])
            return jnp.pad(probs, ((0, 0), (0, num_slots - n), (0, 0), (0, 0)))

        return branch

    probs = run_on_first_slots(dets.valid, run_first, dets.boxes, dets.classes)
    return jnp.where(dets.valid[:, :, None, None], probs, 0.0)


def losses(
    config,
    nets: Networks,
    features,
    rois: targets.ROITargets,
    gt: dict[str, jax.Array],
    key: jax.Array,
    backend: str,
):
    """Every ROI-head loss of `StandardROIHeads` on the sampled ROIs.

    Args:
      config: the jax_rcnn config.
      nets: the bound networks.
      features: the feature dict.
      rois: `sample_rois` output, `[B, R]`, foreground first.
      gt: `gt_boxes`, `gt_classes`, `gt_valid`[, `gt_masks`] (see `rcnn.forward_train`).
      key: the ROI-sampling key (the mask-ROI draw uses `fold_in(key, 1)`, the federated-loss
        classes `fold_in(key, 2)`).
      backend: kernel backend.

    Returns:
      `(losses {"loss_cls", "loss_box_reg"[, "loss_mask"]}, aux)`, aux as `mask_losses`
      (empty without masks).
    """
    out = box_losses(config, nets, features, rois, backend, jax.random.fold_in(key, 2))
    aux = {}
    if config.model.mask_on:
        mask_key = jax.random.fold_in(key, 1)
        mask_loss, aux = mask_losses(config, nets, features, rois, gt, mask_key, backend)
        out.update(mask_loss)
    return out, aux


def sample_mask_rois(
    key: jax.Array, fg_rois: Any, fg_valid: jax.Array, num: int
) -> tuple[Any, jax.Array]:
    """`num` foreground ROIs per image drawn uniformly without replacement
    (`roi_mask_head.num_sampled_masks`; all of them where an image has at most `num`).

    Args:
      key: PRNG key.
      fg_rois: `targets.ROITargets` of the foreground slots, fields `[B, F, ...]`.
      fg_valid: bool[B, F], the slots holding foreground.
      num: slots to keep, `< F`.

    Returns:
      `(rois, valid)` with fields `[B, num, ...]`; the kept foreground comes first, in random
      order, so `run_on_first_slots` still sees a foreground prefix.
    """
    u = jax.random.uniform(key, fg_valid.shape)
    order = jnp.argsort(jnp.where(fg_valid, u, 2.0), axis=1)[:, :num]

    def take(a):
        return jnp.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)

    return jax.tree.map(take, fg_rois), take(fg_valid)


def mask_losses(
    config,
    nets: Networks,
    features,
    rois: targets.ROITargets,
    gt: dict[str, jax.Array],
    key: jax.Array,
    backend: str,
):
    """Mask head on the foreground ROIs (the first F sampled slots): `loss_mask`.

    Args:
      config: the jax_rcnn config.
      nets: the bound networks (their mutable BN state is threaded through the branches).
      features: the FPN dict.
      rois: `sample_rois` output, `[B, R]`, foreground first.
      gt: `gt_boxes f32[B, G, 4]` and `gt_masks` (see `jax_rcnn.targets.mask_targets`).
      key: PRNG key of `roi_mask_head.num_sampled_masks` (unused when 0).
      backend: kernel backend.

    Returns:
      `({"loss_mask": f32[]}, {"mask_targets": f32[B, F, M, M], "mask_logits":
      f32[B, F, M, M, K]})` of the F foreground slots (or of the drawn ones).
    """
    m = config.model
    rh = m.roi_heads
    num_fg = targets.num_fg_slots(
        rh.batch_size_per_image, rh.positive_fraction, rois.valid.shape[1]
    )
    fg_rois = jax.tree.map(lambda a: a[:, :num_fg], rois)
    fg_valid = fg_rois.valid & (fg_rois.gt_classes < rh.num_classes)
    num_sampled = m.roi_mask_head.num_sampled_masks  # >= 0, `config.validate`
    if 0 < num_sampled < num_fg:
        fg_rois, fg_valid = sample_mask_rois(key, fg_rois, fg_valid, num_sampled)
        num_fg = num_sampled
    fg_boxes = jnp.where(fg_valid[..., None], fg_rois.proposal_boxes, 0.0)

    # Detectron2 runs the mask head on the foreground ROIs only, usually far fewer than the F
    # static slots (128 for R50-FPN: ~0.7 TFLOP per full-size step if all ran). Foreground
    # comes first, so run on the first n slots: one `lax.switch` branch per size, outputs
    # padded back to F. Same loss; BN in the mask head sees n slots.
    def run_first(n):
        def branch(bn_state, fg_boxes):
            nets.set_mutable_state(bn_state)
            mask_pooled = pool(config, features, fg_boxes[:, :n], m.roi_mask_head, backend)
            logits = nets.mask_head(mask_pooled)  # [B, n, M, M, K]
            tgt = targets.mask_targets(
                gt["gt_masks"],
                gt["gt_boxes"],
                fg_boxes[:, :n],
                fg_rois.gt_index[:, :n],
                fg_valid[:, :n],
                logits.shape[-2],
                backend=backend,
            )
            loss = loss_ops.mask_rcnn_loss(logits, fg_rois.gt_classes[:, :n], tgt, fg_valid[:, :n])
            pad = ((0, 0), (0, num_fg - n)) + ((0, 0),) * (tgt.ndim - 2)
            logits = jnp.pad(logits, pad + ((0, 0),))
            return loss, logits, jnp.pad(tgt, pad), nets.mutable_state()

        return branch

    # Rematerialised: reverse-mode autodiff of a `lax.switch` makes every branch return the
    # residuals of all branches, zero-filled (~0.6 s per full-size CPU step for the 64- and
    # 128-slot branches' [B*n, 28, 28, 256] activations); with `jax.checkpoint` the residuals
    # are the branch inputs and the chosen branch's forward runs again.
    loss, logits, tgt, bn_state = run_on_first_slots(
        fg_valid, lambda n: jax.checkpoint(run_first(n)), nets.mutable_state(), fg_boxes
    )
    nets.set_mutable_state(bn_state)
    return {"loss_mask": loss}, {"mask_targets": tgt, "mask_logits": logits}
