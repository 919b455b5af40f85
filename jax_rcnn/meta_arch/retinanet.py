"""RetinaNet: backbone -> dense head -> (focal and box losses | per-level decoding + NMS).

**Parity:** Detectron2's `RetinaNet` (`modeling/meta_arch/retinanet.py`): ResNet-FPN p3-p7
with `LastLevelP6P7` from C5, `RetinaNetHead`, and the stage of `meta_arch/dense_head.py`;
boxes are clipped only by `detector_postprocess`, after NMS.
"""

from __future__ import annotations

from typing import Any

import jax

from jax_rcnn.meta_arch import dense_head
from jax_rcnn.meta_arch.common import (
    LOSS_STATE,
    Networks,
    backbone_features,
    detection_outputs,
)


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
    """Detections for a padded batch, as Detectron2's `RetinaNet.forward_inference`.

    Args:
      model: the networks (`jax_rcnn.modeling.build_model(config)`, a `RetinaNet`).
      variables: their variables (`params`, `frozen`).
      images: `u8|f32[B, H, W, 3]` BGR, resized, padded bottom/right (multiples of 32).
      image_sizes: `i32[B, 2]` (h, w) of each resized image before padding.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images.
      config: the jax_rcnn config.
      backend: kernel backend; default `config.model.kernels`.

    Returns:
      `boxes f32[B, D, 4]` xyxy original pixels, `scores f32[B, D]`, `classes i32[B, D]`,
      `valid bool[B, D]`, `det_boxes f32[B, D, 4]` and `det_valid bool[B, D]` in the resized
      frame before `detector_postprocess` (D = `config.test.detections_per_image`).
    """
    backend = backend or config.model.kernels
    nets = Networks(model, variables)

    features = backbone_features(config, nets, images, image_sizes)
    head_out = dense_head.dense_head(config, nets, features)
    dets = dense_head.detect(config, head_out, backend)

    return detection_outputs(dets, image_sizes, original_sizes)


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
    """Detectron2's RetinaNet training losses for a padded batch.

    Args:
      model: the networks (`build_model(config, train=True)`).
      variables: `params`, `frozen`[, `batch_stats`] and `loss_state` (`{"loss_normalizer":
        f32[]}` carried by the train state; `initial_loss_state` when absent).
      batch: `image`, `image_size`, `gt_boxes`, `gt_classes`, `gt_valid` (see
        `jax_rcnn.meta_arch.rcnn.forward_train`); masks are not read.
      key: PRNG key of the step (unused: RetinaNet samples nothing).
      config: the jax_rcnn config.
      mutable: variable collections to update (`("batch_stats",)` for BN).
      backend: kernel backend (unused in training).

    Returns:
      `(losses {"loss_cls", "loss_box_reg"}, aux)`; aux `{"gt_labels" i32[B, A],
      "loss_normalizer" f32[], "updates": {..., "loss_state": new state}}`.
    """
    del key, backend
    nets = Networks(model, variables, mutable)
    loss_state = variables.get(LOSS_STATE) or initial_loss_state(config)

    features = backbone_features(config, nets, batch["image"], batch["image_size"])
    head_out = dense_head.dense_head(config, nets, features)
    losses, loss_state, gt_labels = dense_head.dense_losses(config, head_out, batch, loss_state)

    updates = {**nets.mutable_state(), LOSS_STATE: loss_state}
    aux = dict(gt_labels=gt_labels, loss_normalizer=loss_state["loss_normalizer"], updates=updates)
    return losses, aux


def initial_loss_state(config) -> dict[str, Any]:
    """`{"loss_normalizer": f32[]}`: Detectron2's EMA of the foreground count starts at 100."""
    del config
    return dense_head.initial_loss_state()
