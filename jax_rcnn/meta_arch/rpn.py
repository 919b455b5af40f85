"""The RPN stage: objectness and deltas on the pyramid, anchor targets and losses, proposals.

**Parity:** Detectron2's `RPN` (`modeling/proposal_generator/rpn.py`): one shared
`StandardRPNHead` over `MODEL.RPN.IN_FEATURES`, anchors of `DefaultAnchorGenerator`, anchors
labelled by `Matcher` (`model.rpn.matcher`, see `jax_rcnn.research`) and subsampled per image
(`model.rpn.sampler`) (`jax_rcnn.targets.label_and_sample_anchors`),
the losses of `jax_rcnn.losses.rpn_losses`, and per-level top-k + NMS proposals
(`jax_rcnn.proposals.find_top_rpn_proposals`). Proposals carry no gradient in training
(Detectron2's approximate joint training).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_rcnn import anchors as anchor_ops
from jax_rcnn import losses as loss_ops
from jax_rcnn import proposals, research, targets
from jax_rcnn.meta_arch.common import Networks, feature_stride, label_on_first_gt


class RPNOutputs(NamedTuple):
    """The RPN head on every level.

    Attributes:
      anchors: per level `f32[H_l*W_l*A, 4]` xyxy (the same for every image).
      logits: per level `f32[B, H_l*W_l*A]` objectness logits.
      deltas: per level `f32[B, H_l*W_l*A, 4]` anchor deltas.
    """

    anchors: list[Any]
    logits: list[jax.Array]
    deltas: list[jax.Array]


def level_anchors(config, features: dict[str, jax.Array], in_features) -> list[Any]:
    """Anchors of the levels `in_features` of the padded batch (`f32[H_l*W_l*A, 4]` each)."""
    ag = config.model.anchor_generator
    return anchor_ops.grid_anchors(
        grid_sizes=[tuple(features[n].shape[1:3]) for n in in_features],
        strides=[feature_stride(n, config.model.resnets.res5_dilation) for n in in_features],
        sizes=ag.sizes,
        aspect_ratios=ag.aspect_ratios,
        offset=ag.offset,
    )


def rpn_head(config, nets: Networks, features: dict[str, jax.Array]) -> RPNOutputs:
    """The shared RPN head on `config.model.rpn.in_features`, with those levels' anchors."""
    logits, deltas = nets.rpn_head(features)
    return RPNOutputs(
        level_anchors(config, features, tuple(config.model.rpn.in_features)), logits, deltas
    )


def rpn_losses(config, out: RPNOutputs, gt: dict[str, jax.Array], key: jax.Array):
    """Anchors labelled and sampled per image, then `loss_rpn_cls` and `loss_rpn_loc`.

    Args:
      config: the jax_rcnn config (`model.rpn`).
      out: `rpn_head` outputs.
      gt: `gt_boxes f32[B, G, 4]`, `gt_valid bool[B, G]`, `image_size i32[B, 2]`.
      key: PRNG key of the anchor sampling.

    Returns:
      `(losses {"loss_rpn_cls", "loss_rpn_loc"}, labels i32[B, A])`.
    """
    rpn = config.model.rpn
    # The barrier stops XLA from constant-folding IoU/delta reductions over 10^5 anchors,
    # which costs seconds of compile time and nothing at run time.
    all_anchors = jax.lax.optimization_barrier(jnp.concatenate(out.anchors, axis=0))
    label = functools.partial(
        targets.label_and_sample_anchors,
        iou_thresholds=rpn.iou_thresholds,
        iou_labels=rpn.iou_labels,
        batch_size_per_image=rpn.batch_size_per_image,
        positive_fraction=rpn.positive_fraction,
        boundary_thresh=rpn.boundary_thresh,
        assigner=research.get(rpn, "matcher", "iou"),
        sampler=research.get(rpn, "sampler", "random"),
        num_per_level=tuple(a.shape[0] for a in out.anchors),
    )
    num_images = gt["image_size"].shape[0]
    anchor_targets = label_on_first_gt(
        lambda boxes, valid, k, size: label(k, all_anchors, boxes, valid, size),
        gt["gt_boxes"],
        gt["gt_valid"],
        jax.random.split(key, num_images),
        gt["image_size"],
    )
    box2box = research.box_coder(rpn)
    losses = loss_ops.rpn_losses(
        jnp.concatenate(out.logits, axis=1),
        jnp.concatenate(out.deltas, axis=1),
        anchor_targets.labels,
        box2box.get_deltas(all_anchors[None], anchor_targets.matched_gt_boxes),
        batch_size_per_image=rpn.batch_size_per_image,
        smooth_l1_beta=rpn.smooth_l1_beta,
        loss_weight=rpn.loss_weight,
        bbox_reg_loss_weight=rpn.bbox_reg_loss_weight,
        box_reg_loss=research.box_reg_loss(rpn),
        anchors=all_anchors,
        matched_gt_boxes=anchor_targets.matched_gt_boxes,
        box2box=box2box,
    )
    return losses, anchor_targets.labels


def select_proposals(
    config, out: RPNOutputs, image_sizes, *, training: bool, backend: str
) -> proposals.Proposals:
    """RPN outputs -> proposals with the train or test top-k of `config.model.rpn`.

    In training the proposals carry no gradient (the RPN outputs are stopped here).

    Args:
      config: the jax_rcnn config.
      out: `rpn_head` outputs.
      image_sizes: `i32[B, 2]` (h, w) before padding.
      training: use `pre/post_nms_topk_train` instead of `_test`.
      backend: kernel backend.

    Returns:
      `proposals.Proposals` with `post_nms_topk_{train,test}` slots per image.
    """
    rpn = config.model.rpn
    return proposals.find_top_rpn_proposals(
        out.anchors,
        jax.lax.stop_gradient(out.logits),
        jax.lax.stop_gradient(out.deltas),
        image_sizes,
        box2box=research.box_coder(rpn),
        nms_thresh=rpn.nms_thresh,
        pre_nms_topk=rpn.pre_nms_topk_train if training else rpn.pre_nms_topk_test,
        post_nms_topk=rpn.post_nms_topk_train if training else rpn.post_nms_topk_test,
        min_box_size=rpn.min_size,
        backend=backend,
    )
