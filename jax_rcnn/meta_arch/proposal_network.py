"""RPN-only detectors (`ProposalNetwork`): backbone -> RPN -> (RPN losses | proposals).

**Parity:** Detectron2's `ProposalNetwork` (`modeling/meta_arch/rcnn.py`): the R-CNN
preprocessing and backbone (ResNet-FPN, or the plain ResNet to res4 of `rpn_R_50_C4_1x`), the
`RPN` stage of `meta_arch/rpn.py`; training returns only `loss_rpn_cls` and `loss_rpn_loc`
(the proposals are computed anyway, as Detectron2 does, so a non-finite proposal stops the
step); inference returns the test-mode proposals after `detector_postprocess` (scaled to the
original image, clipped, empty boxes dropped), in the order of `find_top_rpn_proposals`:
descending raw objectness logit. Deviation: the proposals are padded to
`P = post_nms_topk_test` slots with a `valid` mask, valid slots first.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jax_rcnn import postprocess
from jax_rcnn.meta_arch import rpn
from jax_rcnn.meta_arch.common import Networks, backbone_features


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
    """Proposals for a padded batch, as Detectron2's `ProposalNetwork.forward` at test time.

    Args:
      model: the networks (`jax_rcnn.modeling.build_model(config)`, a `ProposalNetwork`).
      variables: their variables (`params`, `frozen`).
      images: `u8|f32[B, H, W, 3]` BGR, resized, padded bottom/right (FPN: multiples of 32;
        C4: any size, Detectron2 pads only to the batch's largest image).
      image_sizes: `i32[B, 2]` (h, w) of each resized image before padding.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images.
      config: the jax_rcnn config.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      dict with (P = `config.model.rpn.post_nms_topk_test`): `proposal_boxes f32[B, P, 4]`
      xyxy original pixels, `objectness_logits f32[B, P]` (raw logits), `valid bool[B, P]`,
      sorted by descending logit with the valid slots first (invalid slots: zero boxes, logit
      0); and the resized-frame proposals before `detector_postprocess`:
      `resized_proposal_boxes f32[B, P, 4]`, `resized_objectness_logits f32[B, P]`,
      `resized_valid bool[B, P]`.
    """
    backend = backend or config.model.kernels
    nets = Networks(model, variables)

    features = backbone_features(config, nets, images, image_sizes)
    rpn_out = rpn.rpn_head(config, nets, features)
    props = rpn.select_proposals(config, rpn_out, image_sizes, training=False, backend=backend)

    boxes, valid = postprocess.detector_postprocess(
        props.boxes, props.valid, image_sizes, original_sizes
    )
    # Detectron2 drops the empty boxes (`results[nonempty]`): keep the order, valid first.
    order = jnp.argsort(~valid, axis=1, stable=True)
    valid = jnp.take_along_axis(valid, order, axis=1)
    boxes = jnp.take_along_axis(boxes, order[..., None], axis=1)
    logits = jnp.take_along_axis(props.logits, order, axis=1)
    return dict(
        proposal_boxes=jnp.where(valid[..., None], boxes, 0.0),
        objectness_logits=jnp.where(valid, logits, 0.0),
        valid=valid,
        resized_proposal_boxes=props.boxes,
        resized_objectness_logits=props.logits,
        resized_valid=props.valid,
    )


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
    """Detectron2's `ProposalNetwork` training losses for a padded batch.

    Args:
      model: the networks (`build_model(config, train=True)`).
      variables: their variables; differentiate w.r.t. `params`.
      batch: `image u8|f32[B, H, W, 3]` BGR padded, `image_size i32[B, 2]`, `gt_boxes
        f32[B, G, 4]` xyxy resized-input px, `gt_valid bool[B, G]` (classes and masks unread).
      key: PRNG key of this step (anchor sampling).
      config: the jax_rcnn config.
      mutable: variable collections to update (`("batch_stats",)` for BN).
      backend: kernel backend (NMS of the training proposals); default `config.model.kernels`.

    Returns:
      `(losses {"loss_rpn_cls", "loss_rpn_loc"}, aux)`; aux `{"rpn_labels" i32[B, A],
      "proposals" (training `Proposals`, `post_nms_topk_train` slots), "all_finite" bool[B]
      (False: a proposal decoded to a non-finite box; Detectron2 raises), "updates"}`.
    """
    backend = backend or config.model.kernels
    gt = {k: batch[k] for k in ("image_size", "gt_boxes", "gt_valid")}
    nets = Networks(model, variables, mutable)

    features = backbone_features(config, nets, batch["image"], gt["image_size"])
    rpn_out = rpn.rpn_head(config, nets, features)
    losses, rpn_labels = rpn.rpn_losses(config, rpn_out, gt, key)
    props = rpn.select_proposals(config, rpn_out, gt["image_size"], training=True, backend=backend)

    aux = dict(rpn_labels=rpn_labels, proposals=props, all_finite=props.all_finite)
    aux["updates"] = nets.mutable_state()
    return losses, aux


def initial_loss_state(config) -> dict[str, Any]:
    """Training state the losses carry from step to step: none for the RPN."""
    del config
    return {}
