"""The two-stage R-CNN pipeline, top to bottom: features -> RPN -> proposals -> pool -> heads.

**Parity:** Detectron2's `GeneralizedRCNN.inference` (`modeling/meta_arch/rcnn.py`) with
`RPN` and `StandardROIHeads`: normalisation inside the model, padding with 0 *after*
normalisation, per-level top-k proposals with per-level NMS, ROIAlignV2 poolers, class-specific
box decoding, per-class NMS, mask head on the detections. Every variable-length set is padded to a
static size with a `*_valid` mask (see `jax_rcnn.proposals`, `jax_rcnn.postprocess`).
`forward_train` is `GeneralizedRCNN.forward` in training mode: the same networks, the RPN and
ROI-head targets of `jax_rcnn.targets` and the losses of `jax_rcnn.losses`; proposals and
targets carry no gradient (Detectron2's approximate joint training).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jax_rcnn import anchors as anchor_ops
from jax_rcnn import boxes as box_ops
from jax_rcnn import losses as loss_ops
from jax_rcnn import poolers, postprocess, proposals, targets
from jax_rcnn.modeling import GeneralizedRCNN


def feature_stride(name: str) -> int:
    """Stride of an FPN level name: "p2" -> 4, ..., "p6" -> 64."""
    return 2 ** int(name[1:])


def preprocess(
    images: jax.Array,
    image_sizes: jax.Array,
    pixel_mean: tuple[float, ...],
    pixel_std: tuple[float, ...],
) -> jax.Array:
    """Normalises a padded batch exactly like Detectron2's `preprocess_image`.

    Args:
      images: `u8|f32[B, H, W, 3]` BGR, each image at the top-left, anything in the padding.
      image_sizes: `i32[B, 2]` (h, w) of each image before padding.
      pixel_mean: per-channel mean (BGR).
      pixel_std: per-channel std.

    Returns:
      `f32[B, H, W, 3]`: `(x - mean) / std` inside each image, exactly 0 in the padding
      (Detectron2 pads the *normalised* tensor with zeros).
    """
    x = (images.astype(jnp.float32) - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(
        pixel_std, jnp.float32
    )
    rows = jnp.arange(images.shape[1])[None, :, None]
    cols = jnp.arange(images.shape[2])[None, None, :]
    inside = (rows < image_sizes[:, 0, None, None]) & (cols < image_sizes[:, 1, None, None])
    return jnp.where(inside[..., None], x, 0.0)


def rpn_anchors(config, features: dict[str, jax.Array]) -> list[jax.Array]:
    """Anchors of every RPN level for the padded batch (`f32[H_l*W_l*A, 4]` per level)."""
    names = tuple(config.model.rpn.in_features)
    ag = config.model.anchor_generator
    return anchor_ops.grid_anchors(
        grid_sizes=[tuple(features[n].shape[1:3]) for n in names],
        strides=[feature_stride(n) for n in names],
        sizes=ag.sizes,
        aspect_ratios=ag.aspect_ratios,
        offset=ag.offset,
    )


def _pool(config, features, boxes, head, backend):
    names = tuple(config.model.roi_heads.in_features)
    return poolers.roi_pool(
        [features[n] for n in names],
        boxes,
        min_level=int(names[0][1:]),
        output_size=head.pooler_resolution,
        sampling_ratio=head.pooler_sampling_ratio,
        backend=backend,
    )


def select_proposals(
    config, anchors, logits, deltas, image_sizes, *, training: bool, backend: str
) -> proposals.Proposals:
    """RPN outputs -> proposals with the train or test top-k of `config.model.rpn`.

    Args:
      config: the jax_rcnn config.
      anchors: per level `f32[H_l*W_l*A, 4]` (`rpn_anchors`).
      logits: per level `f32[B, H_l*W_l*A]` objectness logits.
      deltas: per level `f32[B, H_l*W_l*A, 4]` anchor deltas.
      image_sizes: `i32[B, 2]` (h, w) before padding.
      training: use `pre/post_nms_topk_train` instead of `_test`.
      backend: kernel backend.

    Returns:
      `proposals.Proposals` with `post_nms_topk_{train,test}` slots per image.
    """
    rpn = config.model.rpn
    return proposals.find_top_rpn_proposals(
        anchors,
        logits,
        deltas,
        image_sizes,
        box2box=box_ops.Box2BoxTransform(tuple(rpn.bbox_reg_weights)),
        nms_thresh=rpn.nms_thresh,
        pre_nms_topk=rpn.pre_nms_topk_train if training else rpn.pre_nms_topk_test,
        post_nms_topk=rpn.post_nms_topk_train if training else rpn.post_nms_topk_test,
        min_box_size=rpn.min_size,
        backend=backend,
    )


def detect_boxes(config, apply, features, props, image_sizes, backend) -> postprocess.Detections:
    """Box head on the pooled proposals -> per-class decoded, thresholded, NMS'd detections.

    Args:
      config: the jax_rcnn config.
      apply: `apply(method, *args)` of the model with its variables bound.
      features: the FPN dict.
      props: `proposals.Proposals` (P slots).
      image_sizes: `i32[B, 2]`.
      backend: kernel backend.

    Returns:
      `postprocess.Detections` with `config.test.detections_per_image` slots, resized frame.
    """
    m = config.model
    pooled = _pool(config, features, props.boxes, m.roi_box_head, backend)
    cls_logits, box_deltas = apply(GeneralizedRCNN.box_head, pooled)
    box2box = box_ops.Box2BoxTransform(tuple(m.roi_box_head.bbox_reg_weights))
    return postprocess.fast_rcnn_inference(
        box2box.apply_deltas(box_deltas, props.boxes),
        jax.nn.softmax(cls_logits, axis=-1),
        props.valid,
        image_sizes,
        score_thresh=m.roi_heads.score_thresh_test,
        nms_thresh=m.roi_heads.nms_thresh_test,
        topk_per_image=config.test.detections_per_image,
        backend=backend,
    )


def inference(
    model: GeneralizedRCNN,
    variables: dict[str, Any],
    images: jax.Array,
    image_sizes: jax.Array,
    original_sizes: jax.Array,
    *,
    config,
    backend: str | None = None,
) -> dict[str, jax.Array]:
    """Detections for a padded batch, as Detectron2's test path computes them.

    Args:
      model: the networks (`jax_rcnn.modeling.build_model(config)`).
      variables: their variables (`params`, `frozen`, ...).
      images: `u8|f32[B, H, W, 3]` BGR, resized, padded bottom/right (H, W multiples of 32).
      image_sizes: `i32[B, 2]` (h, w) of each resized image before padding.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images (`detector_postprocess`).
      config: the jax_rcnn config.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      dict with (D = `config.test.detections_per_image`, P = `post_nms_topk_test`):
        `boxes f32[B, D, 4]` xyxy original pixels, `scores f32[B, D]`, `classes i32[B, D]`,
        `valid bool[B, D]`; `det_boxes f32[B, D, 4]` in resized-input pixels;
        `proposal_boxes f32[B, P, 4]`, `proposal_logits f32[B, P]`, `proposal_valid bool[B, P]`;
        and for mask models `mask_probs f32[B, D, M, M]` (sigmoid of the predicted class's
        28x28 mask logits, to be pasted with `jax_rcnn.masks.paste_masks_in_image`).
    """
    m = config.model
    backend = backend or m.kernels
    apply = lambda method, *args: model.apply(variables, *args, method=method)  # noqa: E731

    # 1. Backbone + FPN.
    x = preprocess(images, image_sizes, m.pixel_mean, m.pixel_std)
    features = apply(GeneralizedRCNN.features, x)

    # 2. RPN: objectness + deltas per level, then proposals.
    logits, deltas = apply(GeneralizedRCNN.rpn_head, features)
    anchors = rpn_anchors(config, features)
    props = select_proposals(
        config, anchors, logits, deltas, image_sizes, training=False, backend=backend
    )

    # 3. Box head on the pooled proposals: class scores and class-specific boxes.
    dets = detect_boxes(config, apply, features, props, image_sizes, backend)
    out_boxes, out_valid = postprocess.detector_postprocess(
        dets.boxes, dets.valid, image_sizes, original_sizes
    )
    out = dict(
        boxes=out_boxes,
        scores=dets.scores,
        classes=dets.classes,
        valid=out_valid,
        det_boxes=dets.boxes,
        det_valid=dets.valid,
        proposal_boxes=props.boxes,
        proposal_logits=props.logits,
        proposal_valid=props.valid,
    )

    # 4. Mask head on the detections (resized-input frame), predicted class's mask.
    if m.mask_on:
        out["mask_probs"] = mask_probs(config, apply, features, dets, backend)
    return out


# Static slot counts that work on "the first n of S padded slots" may run on (plus S itself).
MASK_HEAD_SLOTS = (8, 16, 32, 64)


def run_on_first_slots(valid: jax.Array, make_branch, *operands):
    """`make_branch(n)(*operands)` for the smallest n of `MASK_HEAD_SLOTS` (or S) that holds
    every valid slot of every image: one `lax.switch` branch per size.

    Padded arrays of S slots (detections, foreground ROIs, gt) mostly hold padding; work that
    ignores invalid slots gives the same result on the first n slots when no valid slot lies
    beyond n. Each branch must return the same shapes (pad back to S where needed).

    Args:
      valid: `bool[B, S]` valid slots.
      make_branch: `n -> fn(*operands)`, n a static int.
      *operands: passed to the chosen branch.
    """
    num_slots = valid.shape[1]
    sizes = sorted({min(n, num_slots) for n in (*MASK_HEAD_SLOTS, num_slots)})
    needed = jnp.max(jnp.where(valid, jnp.arange(1, num_slots + 1), 0))
    index = jnp.searchsorted(jnp.asarray(sizes), needed)
    return jax.lax.switch(index, [make_branch(n) for n in sizes], *operands)


def mask_probs(config, apply, features, dets, backend) -> jax.Array:
    """Sigmoid mask of each detection's class, `f32[B, D, M, M]` (0 in invalid slots).

    Detectron2 runs the mask head on the detections only; with D static slots (100 by default)
    most are usually padding, and the head is ~90 GFLOP at D=100 for R50-FPN. Valid detections
    come first (sorted by score), so the head runs on the first n slots, n the smallest of
    `MASK_HEAD_SLOTS` (or D) holding every image's valid detections: same masks, static shapes,
    one `lax.switch` branch per size.
    """
    num_slots = dets.boxes.shape[1]

    def run_first(n):
        def branch(boxes, classes):
            pooled = _pool(config, features, boxes[:, :n], config.model.roi_mask_head, backend)
            logits = apply(GeneralizedRCNN.mask_head, pooled)  # [B, n, M, M, K]
            cls = 0 if logits.shape[-1] == 1 else classes[:, :n]
            cls = jnp.broadcast_to(jnp.asarray(cls), classes[:, :n].shape)
            logits = jnp.take_along_axis(logits, cls[:, :, None, None, None], axis=-1)
            probs = jax.nn.sigmoid(logits[..., 0])
            return jnp.pad(probs, ((0, 0), (0, num_slots - n), (0, 0), (0, 0)))

        return branch

    probs = run_on_first_slots(dets.valid, run_first, dets.boxes, dets.classes)
    return jnp.where(dets.valid[:, :, None, None], probs, 0.0)


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


def forward_train(
    model: GeneralizedRCNN,
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    config,
    mutable: tuple[str, ...] = (),
    backend: str | None = None,
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Detectron2's five training losses for a padded batch (`GeneralizedRCNN.forward`).

    Args:
      model: the networks (`build_model(config, train=True)`).
      variables: their variables (`params`, `frozen`, ...); differentiate w.r.t. `params`.
      batch: `image u8|f32[B, H, W, 3]` BGR padded, `image_size i32[B, 2]`, `gt_boxes
        f32[B, G, 4]` xyxy resized-input px, `gt_classes i32[B, G]`, `gt_valid bool[B, G]`, and
        for mask models `gt_masks`: `u8[B, G, M, M]` box-relative soft masks
        (`jax_rcnn.data.batching.make_train_example`) or `bool[B, G, Hm, Wm]` full-image
        bitmasks (exact Detectron2 targets), told apart by dtype (`targets.mask_targets`).
      key: PRNG key of this step (anchor and ROI sampling).
      config: the jax_rcnn config.
      mutable: names of the variable collections to update (`("batch_stats",)` for BN); their
        new values are returned in `aux["updates"]`.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      `(losses, aux)`: losses `{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"[,
      "loss_mask"]}` of `f32[]`; aux `{"rpn_labels" i32[B, A], "proposals" (training
      `Proposals` + gt), "rois" (`targets.ROITargets`, `[B, R]`), "all_finite" bool[B]
      (False: a proposal decoded to a non-finite box; Detectron2 raises), "updates"[,
      "mask_targets" bool[B, F, M, M], "mask_logits" f32[B, F, M, M, K] of the foreground
      slots `rois[:, :F]`, or of the `F = roi_mask_head.num_sampled_masks` ROIs drawn from
      them (`sample_mask_rois`)]}`.
    """
    m = config.model
    backend = backend or m.kernels
    image_sizes = batch["image_size"]
    gt_boxes, gt_classes, gt_valid = batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"]
    num_images = image_sizes.shape[0]
    anchor_key, roi_key = jax.random.split(key)
    state = dict(variables)

    def apply(method, *args):
        if not mutable:
            return model.apply(state, *args, method=method)
        out, updates = model.apply(state, *args, method=method, mutable=list(mutable))
        state.update(updates)
        return out

    # 1. Backbone + FPN.
    x = preprocess(batch["image"], image_sizes, m.pixel_mean, m.pixel_std)
    features = apply(GeneralizedRCNN.features, x)

    # 2. RPN head; anchors labelled and sampled per image; RPN losses.
    logits, deltas = apply(GeneralizedRCNN.rpn_head, features)
    anchors = rpn_anchors(config, features)
    # The barrier stops XLA from constant-folding IoU/delta reductions over 10^5 anchors,
    # which costs seconds of compile time and nothing at run time.
    all_anchors = jax.lax.optimization_barrier(jnp.concatenate(anchors, axis=0))
    label_anchors = functools.partial(
        targets.label_and_sample_anchors,
        iou_thresholds=m.rpn.iou_thresholds,
        iou_labels=m.rpn.iou_labels,
        batch_size_per_image=m.rpn.batch_size_per_image,
        positive_fraction=m.rpn.positive_fraction,
        boundary_thresh=m.rpn.boundary_thresh,
    )

    # Anchor-gt IoU is [G, A] per image (G = input.max_gt, 100 for COCO: 0.4 s of a full-size
    # CPU step); padded gt never match, so label against the first n gt slots that hold every
    # valid one. Same labels and samples.
    def label_first(n):
        def branch(keys, gt_boxes, gt_valid):
            return jax.vmap(label_anchors, in_axes=(0, None, 0, 0, 0))(
                keys, all_anchors, gt_boxes[:, :n], gt_valid[:, :n], image_sizes
            )

        return branch

    anchor_targets = run_on_first_slots(
        gt_valid.astype(bool),
        label_first,
        jax.random.split(anchor_key, num_images),
        gt_boxes,
        gt_valid,
    )
    rpn_box2box = box_ops.Box2BoxTransform(tuple(m.rpn.bbox_reg_weights))
    losses = loss_ops.rpn_losses(
        jnp.concatenate(logits, axis=1),
        jnp.concatenate(deltas, axis=1),
        anchor_targets.labels,
        rpn_box2box.get_deltas(all_anchors[None], anchor_targets.matched_gt_boxes),
        batch_size_per_image=m.rpn.batch_size_per_image,
        smooth_l1_beta=m.rpn.smooth_l1_beta,
        loss_weight=m.rpn.loss_weight,
        bbox_reg_loss_weight=m.rpn.bbox_reg_loss_weight,
    )

    # 3. Training proposals (no gradient), with the gt boxes appended.
    props = select_proposals(
        config,
        anchors,
        jax.lax.stop_gradient(logits),
        jax.lax.stop_gradient(deltas),
        image_sizes,
        training=True,
        backend=backend,
    )
    if m.roi_heads.proposal_append_gt:
        props = proposals.add_ground_truth_to_proposals(props, gt_boxes, gt_valid)

    # 4. ROI-head batch: match to gt, sample R ROIs per image (foreground first).
    rh = m.roi_heads
    sample_rois = functools.partial(
        targets.label_and_sample_proposals,
        num_classes=rh.num_classes,
        iou_thresholds=rh.iou_thresholds,
        iou_labels=rh.iou_labels,
        batch_size_per_image=rh.batch_size_per_image,
        positive_fraction=rh.positive_fraction,
    )
    rois = jax.vmap(sample_rois)(
        jax.random.split(roi_key, num_images),
        props.boxes,
        props.valid,
        gt_boxes,
        gt_classes,
        gt_valid,
    )

    # 5. Box head on the sampled ROIs; classification and box regression losses.
    pooled = _pool(config, features, rois.proposal_boxes, m.roi_box_head, backend)
    cls_logits, box_deltas = apply(GeneralizedRCNN.box_head, pooled)
    losses.update(
        loss_ops.fast_rcnn_losses(
            cls_logits,
            box_deltas,
            rois.proposal_boxes,
            rois.gt_classes,
            rois.gt_boxes,
            rois.valid,
            box2box=box_ops.Box2BoxTransform(tuple(m.roi_box_head.bbox_reg_weights)),
            smooth_l1_beta=m.roi_box_head.smooth_l1_beta,
            bbox_reg_loss_weight=m.roi_box_head.bbox_reg_loss_weight,
        )
    )
    aux = dict(
        rpn_labels=anchor_targets.labels,
        proposals=props,
        rois=rois,
        all_finite=props.all_finite,
    )

    # 6. Mask head on the foreground ROIs (the first F slots); mask loss.
    if m.mask_on:
        num_fg = targets.num_fg_slots(
            rh.batch_size_per_image, rh.positive_fraction, props.boxes.shape[1]
        )
        fg_rois = jax.tree.map(lambda a: a[:, :num_fg], rois)
        fg_valid = fg_rois.valid & (fg_rois.gt_classes < rh.num_classes)
        num_sampled = m.roi_mask_head.num_sampled_masks  # >= 0, `config.validate`
        if 0 < num_sampled < num_fg:
            fg_rois, fg_valid = sample_mask_rois(
                jax.random.fold_in(roi_key, 1), fg_rois, fg_valid, num_sampled
            )
            num_fg = num_sampled
        fg_boxes = jnp.where(fg_valid[..., None], fg_rois.proposal_boxes, 0.0)
        # Detectron2 runs the mask head on the foreground ROIs only, usually far fewer than
        # the F static slots (128 for R50-FPN: ~0.7 TFLOP per full-size step if all ran).
        # Foreground comes first, so run on the first n slots, n the smallest of
        # MASK_HEAD_SLOTS (or F) holding every image's foreground: one `lax.switch` branch per
        # size, outputs padded back to F. Same loss; BN in the mask head sees n slots.
        branch_state = {k: state[k] for k in mutable}

        def run_first(n):
            def branch(branch_state, fg_boxes):
                state.update(branch_state)
                mask_pooled = _pool(config, features, fg_boxes[:, :n], m.roi_mask_head, backend)
                logits = apply(GeneralizedRCNN.mask_head, mask_pooled)  # [B, n, M, M, K]
                tgt = targets.mask_targets(
                    batch["gt_masks"],
                    gt_boxes,
                    fg_boxes[:, :n],
                    fg_rois.gt_index[:, :n],
                    fg_valid[:, :n],
                    logits.shape[-2],
                    backend=backend,
                )
                loss = loss_ops.mask_rcnn_loss(
                    logits, fg_rois.gt_classes[:, :n], tgt, fg_valid[:, :n]
                )
                pad = ((0, 0), (0, num_fg - n)) + ((0, 0),) * (tgt.ndim - 2)
                logits = jnp.pad(logits, pad + ((0, 0),))
                return loss, logits, jnp.pad(tgt, pad), {k: state[k] for k in mutable}

            return branch

        # Rematerialised: reverse-mode autodiff of a `lax.switch` makes every branch return
        # the residuals of all branches, zero-filled (~0.6 s per full-size CPU step for the
        # 64- and 128-slot branches' [B*n, 28, 28, 256] activations); with `jax.checkpoint`
        # the residuals are the branch inputs and the chosen branch's forward runs again.
        loss_mask, mask_logits, mask_targets, updates = run_on_first_slots(
            fg_valid, lambda n: jax.checkpoint(run_first(n)), branch_state, fg_boxes
        )
        state.update(updates)
        losses["loss_mask"] = loss_mask
        aux.update(mask_targets=mask_targets, mask_logits=mask_logits)
    aux["updates"] = {k: state[k] for k in mutable}
    return losses, aux
