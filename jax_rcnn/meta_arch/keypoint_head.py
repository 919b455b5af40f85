"""The keypoint stages of `StandardROIHeads` (Keypoint R-CNN, `model.keypoint_on`).

**Parity:** Detectron2's `StandardROIHeads._forward_keypoint` with
`KRCNNConvDeconvUpsampleHead` (`modeling/roi_heads/keypoint_head.py`):

* training: the foreground ROIs (the first F sampled slots) whose matched gt has a visible
  keypoint inside the proposal box are pooled at the proposal boxes on the keypoint pooler
  (`model.roi_keypoint_head`: 14x14 ROIAlignV2), the head gives 56x56 logits per keypoint,
  and `loss_keypoint` is the summed softmax cross-entropy over the valid targets divided by
  their number (`normalize_loss_by_visible_keypoints`) or by
  `B * K * batch_size_per_image * positive_fraction`, times `loss_weight`; with no valid
  target it is 0.
* inference: the head runs on the final detections (clipped boxes, resized-input frame) and
  `jax_rcnn.keypoints.heatmaps_to_keypoints` decodes them; `detector_postprocess` scales x and
  y to the original image without clipping.

Speed: like the mask head, the keypoint head runs on the first n slots holding every selected
ROI / valid detection (`run_on_first_slots`; selected training ROIs are moved to the front
first), under `jax.checkpoint` in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_rcnn import keypoints as kp_ops
from jax_rcnn import postprocess, targets
from jax_rcnn.meta_arch.common import Networks, feature_stride, run_on_first_slots
from jax_rcnn.meta_arch.roi_heads import pool


def keypoint_on(config) -> bool:
    """`MODEL.KEYPOINT_ON` (`configs.common.keypoint` adds the key; absent means False)."""
    return bool(config.model.get("keypoint_on", False))


def keypoint_losses(
    config,
    nets: Networks,
    features,
    rois: targets.ROITargets,
    gt: dict[str, jax.Array],
    backend: str,
):
    """Keypoint head on the foreground ROIs with a visible keypoint: `loss_keypoint`.

    Args:
      config: the jax_rcnn config (`model.roi_keypoint_head`, `model.roi_heads`).
      nets: the bound networks.
      features: the FPN dict.
      rois: `sample_rois` output, `[B, R]`, foreground first.
      gt: `gt_keypoints f32[B, G, K, 3]` (x, y, v) in resized-input pixels.
      backend: kernel backend.

    Returns:
      `({"loss_keypoint": f32[]}, aux)` with aux `keypoint_rois` (`ROITargets` `[B, F]`, the
      selected ROIs first), `keypoint_roi_valid bool[B, F]`, `keypoint_logits
      f32[B, F, 56, 56, K]` (0 beyond the slots run), `keypoint_target_index i32[B, F, K]`,
      `keypoint_target_valid bool[B, F, K]`.
    """
    m = config.model
    rh, kh = m.roi_heads, m.roi_keypoint_head
    num_fg = targets.num_fg_slots(
        rh.batch_size_per_image, rh.positive_fraction, rois.valid.shape[1]
    )
    fg_rois = jax.tree.map(lambda a: a[:, :num_fg], rois)
    fg_valid = fg_rois.valid & (fg_rois.gt_classes < rh.num_classes)
    gt_kps = jnp.take_along_axis(
        gt["gt_keypoints"], fg_rois.gt_index[:, :, None, None], axis=1
    )  # [B, F, K, 3]
    selected = fg_valid & kp_ops.visible_in_box(gt_kps, fg_rois.proposal_boxes)
    order = jnp.argsort(~selected, axis=1, stable=True)

    def take(a):
        return jnp.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)

    fg_rois, gt_kps, selected = jax.tree.map(take, fg_rois), take(gt_kps), take(selected)
    boxes = jnp.where(selected[..., None], fg_rois.proposal_boxes, jnp.asarray([0.0, 0, 1, 1]))

    def run_first(n):
        def branch(bn_state, boxes, gt_kps, selected):
            nets.set_mutable_state(bn_state)
            pooled = pool(config, features, boxes[:, :n], kh, backend)
            logits = nets.keypoint_head(pooled)  # [B, n, S, S, K]
            index, valid = kp_ops.keypoints_to_heatmap(
                gt_kps[:, :n], boxes[:, :n], logits.shape[-2]
            )
            valid = valid & selected[:, :n, None]
            loss_sum = kp_ops.keypoint_ce_sum(logits, index, valid)
            pad = ((0, 0), (0, num_fg - n))
            logits = jnp.pad(logits, pad + ((0, 0),) * 3)
            index, valid = jnp.pad(index, pad + ((0, 0),)), jnp.pad(valid, pad + ((0, 0),))
            return loss_sum, logits, index, valid, nets.mutable_state()

        return branch

    loss_sum, logits, index, valid, bn_state = run_on_first_slots(
        selected,
        lambda n: jax.checkpoint(run_first(n)),
        nets.mutable_state(),
        boxes,
        gt_kps,
        selected,
    )
    nets.set_mutable_state(bn_state)
    if kh.normalize_loss_by_visible_keypoints:
        normalizer = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    else:
        batch = selected.shape[0]
        normalizer = batch * kh.num_keypoints * rh.batch_size_per_image * rh.positive_fraction
    loss = loss_sum / normalizer * kh.loss_weight
    aux = dict(
        keypoint_rois=fg_rois,
        keypoint_roi_valid=selected,
        keypoint_logits=logits,
        keypoint_target_index=index,
        keypoint_target_valid=valid,
    )
    return {"loss_keypoint": loss}, aux


def keypoint_predictions(
    config,
    nets: Networks,
    features,
    dets: postprocess.Detections,
    image_sizes: jax.Array,
    original_sizes: jax.Array,
    backend: str,
) -> dict[str, jax.Array]:
    """Keypoints of the final detections (`keypoint_rcnn_inference` + `detector_postprocess`).

    Args:
      config: the jax_rcnn config.
      nets: the bound networks.
      features: the FPN dict.
      dets: detections (D slots, valid first, resized-input frame).
      image_sizes: `i32[B, 2]` (h, w) of the resized images.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images.
      backend: kernel backend.

    Returns:
      `keypoints f32[B, D, K, 3]` (x, y, score) in original pixels (not clipped; the score
      can exceed 1, as Detectron2's), `det_keypoints f32[B, D, K, 4]` (x, y, upsampled logit,
      score) in resized-input pixels, `keypoint_heatmaps f32[B, D, K, 56, 56]` logits; zeros in
      invalid slots.
    """
    kh = config.model.roi_keypoint_head
    num_slots = dets.boxes.shape[1]

    def run_first(n):
        def branch(boxes):
            logits = nets.keypoint_head(pool(config, features, boxes[:, :n], kh, backend))
            logits = jnp.moveaxis(logits, -1, -3)  # [B, n, K, S, S]
            return jnp.pad(logits, ((0, 0), (0, num_slots - n)) + ((0, 0),) * 3)

        return branch

    heatmaps = run_on_first_slots(dets.valid, run_first, dets.boxes)
    heatmaps = jnp.where(dets.valid[:, :, None, None, None], heatmaps, 0.0)
    b, d = dets.valid.shape
    name = config.model.roi_heads.in_features[0]
    stride = feature_stride(name, config.model.resnets.res5_dilation)
    max_size = stride * max(int(s) for s in features[name].shape[1:3])  # >= the padded image
    decoded = kp_ops.heatmaps_to_keypoints(
        heatmaps.reshape(b * d, *heatmaps.shape[2:]),
        dets.boxes.reshape(b * d, 4),
        dets.valid.reshape(b * d),
        max_size,
    ).reshape(b, d, -1, 4)
    sizes = image_sizes.astype(jnp.float32)
    originals = original_sizes.astype(jnp.float32)
    scale_x = (originals[:, 1] / sizes[:, 1])[:, None, None]
    scale_y = (originals[:, 0] / sizes[:, 0])[:, None, None]
    keypoints = jnp.stack(
        [decoded[..., 0] * scale_x, decoded[..., 1] * scale_y, decoded[..., 3]], axis=-1
    )
    return dict(keypoints=keypoints, det_keypoints=decoded, keypoint_heatmaps=heatmaps)
