"""Faster / Mask R-CNN (`GeneralizedRCNN`): backbone -> RPN -> ROI heads, top to bottom.

**Parity:** Detectron2's `GeneralizedRCNN` (`modeling/meta_arch/rcnn.py`) with `RPN` and
`StandardROIHeads` (FPN, DC5), `Res5ROIHeads` (C4) or `CascadeROIHeads`, chosen by
`config.model.roi_heads.name`; each stage's parity notes are in `meta_arch/rpn.py`,
`meta_arch/roi_heads.py`, `meta_arch/res5_roi_heads.py` and `meta_arch/cascade_roi_heads.py`.
Every variable-length set is padded to a static size with a `*_valid` mask. In training,
proposals and targets carry no gradient (Detectron2's approximate joint training).
"""

from __future__ import annotations

from typing import Any

import jax

from jax_rcnn.meta_arch import cascade_roi_heads, keypoint_head, res5_roi_heads, roi_heads, rpn
from jax_rcnn.meta_arch.common import Networks, backbone_features, detection_outputs
from jax_rcnn.meta_arch.keypoint_head import keypoint_on
from jax_rcnn.proposals import Proposals

# `MODEL.ROI_HEADS.NAME` -> its stages (`sample_rois`, `losses`, `detect_boxes`, `mask_probs`).
ROI_HEADS = {
    "StandardROIHeads": roi_heads,
    "Res5ROIHeads": res5_roi_heads,
    "CascadeROIHeads": cascade_roi_heads,
}

GT_KEYS = ("image_size", "gt_boxes", "gt_classes", "gt_valid", "gt_masks", "gt_keypoints")


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
    """Detections for a padded batch, as Detectron2's test path computes them.

    Args:
      model: the networks (`jax_rcnn.modeling.build_model(config)`).
      variables: their variables (`params`, `frozen`, ...).
      images: `u8|f32[B, H, W, 3]` BGR, resized, padded bottom/right (FPN: H, W multiples of
        32; C4 and DC5 need no multiple).
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
        28x28 mask logits, to be pasted with `jax_rcnn.masks.paste_masks_in_image`);
        for keypoint models (`model.keypoint_on`) `keypoints f32[B, D, K, 3]` (x, y, score)
        in original pixels, `det_keypoints f32[B, D, K, 4]` (x, y, logit, score) in
        resized-input pixels and `keypoint_heatmaps f32[B, D, K, 56, 56]`
        (`meta_arch.keypoint_head.keypoint_predictions`).
    """
    features, props = inference_front(
        model, variables, images, image_sizes, config=config, backend=backend
    )
    return inference_heads(
        model,
        variables,
        features,
        props,
        image_sizes,
        original_sizes,
        config=config,
        backend=backend,
    )


def inference_front(
    model: Any,
    variables: dict[str, Any],
    images: jax.Array,
    image_sizes: jax.Array,
    *,
    config,
    backend: str | None = None,
) -> tuple[dict[str, jax.Array], Proposals]:
    """The first half of `inference`, the one whose shapes follow the padded image: backbone
    features and the RPN's proposals.

    Evaluation compiles it once per padded shape and `inference_heads` once for all of them,
    on features edge-padded to one canvas (`common.edge_pad_features`; see there why that gives
    the same detections).

    Args:
      model, variables, images, image_sizes, config, backend: as `inference`.

    Returns:
      `(features, proposals)`: the feature dict (`{"p2": f32[B, H/4, W/4, C], ...}`) and
      `Proposals` (`boxes f32[B, P, 4]`, `logits f32[B, P]`, `valid bool[B, P]`, ...).
    """
    backend = backend or config.model.kernels
    nets = Networks(model, variables)
    features = backbone_features(config, nets, images, image_sizes)
    rpn_out = rpn.rpn_head(config, nets, features)
    props = rpn.select_proposals(config, rpn_out, image_sizes, training=False, backend=backend)
    return features, props


def inference_heads(
    model: Any,
    variables: dict[str, Any],
    features: dict[str, jax.Array],
    props: Proposals,
    image_sizes: jax.Array,
    original_sizes: jax.Array,
    *,
    config,
    backend: str | None = None,
) -> dict[str, jax.Array]:
    """The second half of `inference`: ROI heads on `inference_front`'s features and proposals.

    Nothing here depends on the spatial size of `features` except ROIAlign's border clamp, so
    features edge-padded to a larger canvas give the same outputs (`common.edge_pad_features`).

    Args:
      model, variables, image_sizes, original_sizes, config, backend: as `inference`.
      features: `inference_front`'s features, possibly edge-padded bottom/right.
      props: `inference_front`'s proposals.

    Returns:
      As `inference`.
    """
    backend = backend or config.model.kernels
    nets = Networks(model, variables)
    heads = roi_heads_stages(config)
    dets = heads.detect_boxes(config, nets, features, props, image_sizes, backend)

    out = detection_outputs(dets, image_sizes, original_sizes)
    out.update(proposal_boxes=props.boxes, proposal_logits=props.logits, proposal_valid=props.valid)
    if config.model.mask_on:
        out["mask_probs"] = heads.mask_probs(config, nets, features, dets, backend)
    if keypoint_on(config):
        out.update(
            keypoint_head.keypoint_predictions(
                config, nets, features, dets, image_sizes, original_sizes, backend
            )
        )
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
    """Detectron2's training losses for a padded batch (`GeneralizedRCNN.forward`).

    Args:
      model: the networks (`build_model(config, train=True)`).
      variables: their variables (`params`, `frozen`, ...); differentiate w.r.t. `params`.
      batch: `image u8|f32[B, H, W, 3]` BGR padded, `image_size i32[B, 2]`, `gt_boxes
        f32[B, G, 4]` xyxy resized-input px, `gt_classes i32[B, G]`, `gt_valid bool[B, G]`, and
        for mask models `gt_masks`: `u8[B, G, M, M]` box-relative soft masks
        (`jax_rcnn.data.batching.make_train_example`) or `bool[B, G, Hm, Wm]` full-image
        bitmasks (exact Detectron2 targets), told apart by dtype (`targets.mask_targets`);
        for keypoint models `gt_keypoints f32[B, G, K, 3]` (x, y, v) resized-input px.
      key: PRNG key of this step (anchor and ROI sampling).
      config: the jax_rcnn config.
      mutable: names of the variable collections to update (`("batch_stats",)` for BN); their
        new values are returned in `aux["updates"]`.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      `(losses, aux)`: losses `{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"[,
      "loss_mask"][, "loss_keypoint"]}` of `f32[]` (Cascade: `loss_cls_stage{k}`,
      `loss_box_reg_stage{k}` per stage instead, and `aux["stage_rois"]`,
      `aux["stage_outputs"]`); aux `{"rpn_labels" i32[B, A], "proposals" (training
      `Proposals`, before gt is appended), "rois" (`targets.ROITargets`, `[B, R]`),
      "all_finite" bool[B] (False: a proposal decoded to a non-finite box; Detectron2
      raises), "updates"[, "mask_targets" f32[B, F, M, M], "mask_logits" f32[B, F, M, M, K]
      of the foreground slots `rois[:, :F]`, or of the `F = roi_mask_head.num_sampled_masks`
      ROIs drawn from them][, keypoint aux: `keypoint_head.keypoint_losses`]}`.
    """
    backend = backend or config.model.kernels
    gt = {k: batch[k] for k in GT_KEYS if k in batch}
    anchor_key, roi_key = jax.random.split(key)
    nets = Networks(model, variables, mutable)
    heads = roi_heads_stages(config)

    features = backbone_features(config, nets, batch["image"], gt["image_size"])
    rpn_out = rpn.rpn_head(config, nets, features)
    losses, rpn_labels = rpn.rpn_losses(config, rpn_out, gt, anchor_key)
    props = rpn.select_proposals(config, rpn_out, gt["image_size"], training=True, backend=backend)
    rois = heads.sample_rois(
        config, props, gt, roi_key, nets=nets, features=features, backend=backend
    )
    roi_losses, aux = heads.losses(config, nets, features, rois, gt, roi_key, backend)
    losses.update(roi_losses)
    if keypoint_on(config):
        kp_losses, kp_aux = keypoint_head.keypoint_losses(config, nets, features, rois, gt, backend)
        losses.update(kp_losses)
        aux.update(kp_aux)
    aux.update(rpn_labels=rpn_labels, proposals=props, rois=rois, all_finite=props.all_finite)
    aux["updates"] = nets.mutable_state()
    return losses, aux


def roi_heads_stages(config):
    """The stage module of `config.model.roi_heads.name` (`ROI_HEADS`).

    Raises:
      ValueError: an unknown name.
    """
    name = config.model.roi_heads.get("name", "StandardROIHeads")
    if name not in ROI_HEADS:
        raise ValueError(f"config.model.roi_heads.name = {name!r}: not one of {sorted(ROI_HEADS)}")
    return ROI_HEADS[name]


def initial_loss_state(config) -> dict[str, Any]:
    """Training state the losses carry from step to step: none for R-CNN."""
    del config
    return {}
