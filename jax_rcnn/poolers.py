"""Multi-level ROI pooling for FPN heads: level assignment and ROIAlignV2.

**Parity:** reproduces Detectron2 `modeling/poolers.py`: `assign_boxes_to_levels` (FPN
eqn. 1, `floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))` in float32,
clamped to [min_level, max_level]; area not clamped, so an inverted box has positive area) and
`ROIPooler.forward` with `pooler_type="ROIAlignV2"` (ROIAlign with `aligned=True`, spatial
scale `1 / 2**level`; a single feature map takes every box). Deviations:

* `assign_boxes_to_levels` returns the absolute level (2..5 for p2-p5); Detectron2 returns it
  minus `min_level`.
* Boxes with a non-finite coordinate are assigned to `min_level` and pooled as the padding box
  `[0, 0, 0, 0]` (finite output, to be masked by the caller); Detectron2 has no such inputs.
  Boxes with a negative area (exactly one side inverted; NaN level, pooled nowhere, i.e.
  zeros, in Detectron2) are assigned to `min_level` and pooled normally.
* Boxes arrive padded per image, `f32[B, R, 4]`, instead of a list of variable-length Boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jax_rcnn import boxes as box_ops
from jax_rcnn import kernels

# Detectron2's eps (its older releases used sys.float_info.epsilon; both give identical
# levels whenever min_level >= canonical_level - 2, i.e. in every FPN config).
_EPS = 1e-8


def assign_boxes_to_levels(
    boxes: jax.Array,
    min_level: int,
    max_level: int,
    canonical_box_size: int = 224,
    canonical_level: int = 4,
) -> jax.Array:
    """FPN level of each box (Detectron2 `assign_boxes_to_levels`, absolute level).

    Args:
      boxes: `f32[..., 4]` xyxy in input pixels (usually `f32[R, 4]`).
      min_level: finest pyramid level available (2 for p2).
      max_level: coarsest pyramid level available (5 for p5).
      canonical_box_size: box size (sqrt of area) mapped to `canonical_level`.
      canonical_level: level of a canonical box.

    Returns:
      `i32[...]` level in [min_level, max_level].

    Example:
      >>> assign_boxes_to_levels(jnp.array([[0, 0, 224, 224], [0, 0, 112, 112.]]), 2, 5)
      Array([4, 3], dtype=int32)
    """
    boxes = boxes.astype(jnp.float32)
    boxes, finite = box_ops.sanitize_boxes(boxes)
    box_sizes = jnp.sqrt(box_ops.area(boxes))
    levels = jnp.floor(
        canonical_level + jnp.log2(box_sizes / canonical_box_size + jnp.float32(_EPS))
    )
    # A negative area (one inverted side) makes sqrt NaN; NaN has no int32 value, so such
    # boxes, like non-finite ones, go to the finest level.
    levels = jnp.where(finite & ~jnp.isnan(levels), levels, min_level)
    return jnp.clip(levels, min_level, max_level).astype(jnp.int32)


def roi_pool(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    *,
    min_level: int,
    output_size: int,
    sampling_ratio: int,
    backend: str = "auto",
    canonical_box_size: int = 224,
    canonical_level: int = 4,
) -> jax.Array:
    """ROIAlignV2 of each box on its FPN level (Detectron2 `ROIPooler`, "ROIAlignV2").

    Args:
      features: L maps `f32[B, H_l, W_l, C]` NHWC, level `min_level + l` with stride
        `2 ** (min_level + l)` (p2-p5 for the box and mask heads).
      boxes: `f32[B, R, 4]` xyxy in input pixels, padded per image. Padded slots should hold
        the canonical `[0, 0, 0, 0]` (with `sampling_ratio=0` the kernel's loop length is the
        largest sampling grid among all boxes); they pool finite values to be masked.
      min_level: level of `features[0]`.
      output_size: S (7 for boxes, 14 for masks).
      sampling_ratio: samples per bin side; 0 = adaptive `ceil(roi_size / S)`.
      backend: `jax_rcnn.kernels` backend: "auto", "pallas" or "reference".
      canonical_box_size: see `assign_boxes_to_levels`.
      canonical_level: see `assign_boxes_to_levels`.

    Returns:
      `f32[B, R, S, S, C]` pooled features.
    """
    num_images, num_boxes = boxes.shape[:2]
    num_levels = len(features)
    flat, _ = box_ops.sanitize_boxes(boxes.reshape(-1, 4).astype(jnp.float32))
    if num_levels == 1:
        level_idx = jnp.zeros((flat.shape[0],), jnp.int32)
    else:
        level_idx = (
            assign_boxes_to_levels(
                flat, min_level, min_level + num_levels - 1, canonical_box_size, canonical_level
            )
            - min_level
        )
    batch_idx = jnp.repeat(jnp.arange(num_images, dtype=jnp.int32), num_boxes)
    pooled = kernels.roi_align(
        list(features),
        flat,
        batch_idx,
        level_idx,
        spatial_scales=[1.0 / 2 ** (min_level + i) for i in range(num_levels)],
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        aligned=True,
        backend=backend,
    )
    return pooled.reshape(num_images, num_boxes, *pooled.shape[1:])
