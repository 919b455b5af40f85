"""Semantic segmentation (`SemanticSegmentor`): ResNet-FPN and `SemSegFPNHead`, no instances.

**Parity:** Detectron2's `modeling/meta_arch/semantic_seg.py:SemanticSegmentor`
(`Misc/semantic_R_50_FPN_1x.yaml`): the loss is `semantic.sem_seg_loss` (weight
`SEM_SEG_HEAD.LOSS_WEIGHT`, 1.0 there); inference gives the stride-4 logits, and
`jax_rcnn.panoptic.panoptic_for_image` applies `sem_seg_postprocess` per image on the host.
"""

from __future__ import annotations

from typing import Any

import jax

from jax_rcnn import semantic
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
    """Semantic logits for a padded batch.

    Args:
      model: the networks (a `SemanticSegmentor`).
      variables: their variables.
      images: `u8|f32[B, H, W, 3]` BGR, resized, padded bottom/right (multiples of 32).
      image_sizes: `i32[B, 2]` (h, w) before padding.
      original_sizes: `i32[B, 2]` (H0, W0); unused here (host-side post-processing).
      config: the jax_rcnn config.
      backend: unused (no kernels).

    Returns:
      `{"sem_seg_logits": f32[B, H/s, W/s, K]}` (s = `sem_seg_head.common_stride`).
    """
    del original_sizes, backend
    nets = Networks(model, variables)
    features = backbone_features(config, nets, images, image_sizes)
    return {"sem_seg_logits": nets.sem_seg(features)}


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
    """`{"loss_sem_seg": f32[]}` for a padded batch (`image`, `image_size`, `sem_seg
    u8|i32[B, H, W]` 255-padded targets); aux `{"sem_seg_logits", "updates"}`."""
    del key, backend
    h = config.model.sem_seg_head
    nets = Networks(model, variables, mutable)
    features = backbone_features(config, nets, batch["image"], batch["image_size"])
    logits = nets.sem_seg(features)
    loss = semantic.sem_seg_loss(
        logits,
        batch["sem_seg"],
        common_stride=h.common_stride,
        ignore_value=h.ignore_value,
        loss_weight=h.loss_weight,
    )
    return {"loss_sem_seg": loss}, {"sem_seg_logits": logits, "updates": nets.mutable_state()}


def initial_loss_state(config) -> dict[str, Any]:
    """Training state the losses carry from step to step: none."""
    del config
    return {}
