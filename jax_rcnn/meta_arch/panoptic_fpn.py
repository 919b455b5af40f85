"""Panoptic FPN (`PanopticFPN`): Mask R-CNN plus a semantic head on the same FPN.

**Parity:** Detectron2's `modeling/meta_arch/panoptic_fpn.py:PanopticFPN`. Training: the
semantic loss (`semantic.sem_seg_loss`: x4 logits, cross-entropy over the non-ignored pixels of
the 255-padded targets, times `SEM_SEG_HEAD.LOSS_WEIGHT`) plus the RPN and ROI-head losses of
`rcnn` (same stages); `PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT` scales the box-predictor and mask
losses (Detectron2 sets it as their `loss_weight`), not the RPN's. Inference: the R-CNN
detections and the stride-4 semantic logits, jit-compiled with static shapes; the per-image
rest (x4 upsample, crop, resize to the original size, argmax, mask pasting and
`combine_semantic_and_instance_outputs`) is host-side post-processing
(`jax_rcnn.panoptic.panoptic_for_image`), as Detectron2 runs it after the model.
"""

from __future__ import annotations

from typing import Any

import jax

from jax_rcnn import semantic
from jax_rcnn.meta_arch import rpn
from jax_rcnn.meta_arch.common import Networks, backbone_features, detection_outputs
from jax_rcnn.meta_arch.rcnn import GT_KEYS, roi_heads_stages

# The ROI-head losses `PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT` scales (box predictor, mask head;
# Cascade's per-stage `loss_cls_stage{k}` too).
INSTANCE_WEIGHTED = ("loss_cls", "loss_box_reg", "loss_mask")


def inference(
    model: Any,
    variables: dict[str, Any],
    images: jax.Array,
    image_sizes: jax.Array,
    original_sizes: jax.Array,
    *,
    config,
    backend: str | None = None,
) -> dict[str, jax.Array]:
    """Detections and semantic logits for a padded batch (Detectron2's test path up to the
    per-image post-processing).

    Args:
      model: the networks (`jax_rcnn.modeling.build_model(config)`, a `PanopticFPN`).
      variables: their variables.
      images: `u8|f32[B, H, W, 3]` BGR, resized, padded bottom/right (H, W multiples of 32).
      image_sizes: `i32[B, 2]` (h, w) of each resized image before padding.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images.
      config: the jax_rcnn config.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      `rcnn.inference`'s dict (`boxes`, `scores`, `classes`, `valid`, `det_boxes`,
      `mask_probs`, proposals, ...) plus `sem_seg_logits f32[B, H/s, W/s, K]` (s =
      `sem_seg_head.common_stride`); `jax_rcnn.panoptic.panoptic_for_image` turns one image's
      share into `sem_seg`, instances and `panoptic_seg` + `segments_info`.
    """
    backend = backend or config.model.kernels
    nets = Networks(model, variables)
    heads = roi_heads_stages(config)

    features = backbone_features(config, nets, images, image_sizes)
    sem_seg_logits = nets.sem_seg(features)
    rpn_out = rpn.rpn_head(config, nets, features)
    props = rpn.select_proposals(config, rpn_out, image_sizes, training=False, backend=backend)
    dets = heads.detect_boxes(config, nets, features, props, image_sizes, backend)

    out = detection_outputs(dets, image_sizes, original_sizes)
    out.update(proposal_boxes=props.boxes, proposal_logits=props.logits, proposal_valid=props.valid)
    out["mask_probs"] = heads.mask_probs(config, nets, features, dets, backend)
    out["sem_seg_logits"] = sem_seg_logits
    return out


def forward_train(
    model: Any,
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    config,
    mutable: tuple[str, ...] = (),
    backend: str | None = None,
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Detectron2's training losses for a padded batch (`PanopticFPN.forward`).

    Args:
      model: the networks (`build_model(config, train=True)`).
      variables: their variables; differentiate w.r.t. `params`.
      batch: `rcnn.forward_train`'s batch plus `sem_seg u8|i32[B, H, W]`: the semantic
        targets at the padded image size, `sem_seg_head.ignore_value` (255) on unlabelled and
        padded pixels.
      key: PRNG key of this step (anchor and ROI sampling).
      config: the jax_rcnn config.
      mutable: variable collections to update (BN), returned in `aux["updates"]`.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      `(losses, aux)`: `{"loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls",
      "loss_box_reg", "loss_mask"}` of `f32[]`; aux as `rcnn.forward_train`'s plus
      `sem_seg_logits f32[B, H/s, W/s, K]`.
    """
    backend = backend or config.model.kernels
    h = config.model.sem_seg_head
    gt = {k: batch[k] for k in GT_KEYS if k in batch}
    anchor_key, roi_key = jax.random.split(key)
    nets = Networks(model, variables, mutable)
    heads = roi_heads_stages(config)

    features = backbone_features(config, nets, batch["image"], gt["image_size"])
    sem_seg_logits = nets.sem_seg(features)
    losses = {
        "loss_sem_seg": semantic.sem_seg_loss(
            sem_seg_logits,
            batch["sem_seg"],
            common_stride=h.common_stride,
            ignore_value=h.ignore_value,
            loss_weight=h.loss_weight,
        )
    }
    rpn_out = rpn.rpn_head(config, nets, features)
    rpn_losses, rpn_labels = rpn.rpn_losses(config, rpn_out, gt, anchor_key)
    losses.update(rpn_losses)
    props = rpn.select_proposals(config, rpn_out, gt["image_size"], training=True, backend=backend)
    rois = heads.sample_rois(config, props, gt, roi_key)
    roi_losses, aux = heads.losses(config, nets, features, rois, gt, roi_key, backend)
    weight = config.model.panoptic_fpn.instance_loss_weight
    losses.update(
        {k: v * weight if k.startswith(INSTANCE_WEIGHTED) else v for k, v in roi_losses.items()}
    )
    aux.update(rpn_labels=rpn_labels, proposals=props, rois=rois, all_finite=props.all_finite)
    aux["sem_seg_logits"] = sem_seg_logits
    aux["updates"] = nets.mutable_state()
    return losses, aux


def initial_loss_state(config) -> dict[str, Any]:
    """Training state the losses carry from step to step: none."""
    del config
    return {}
