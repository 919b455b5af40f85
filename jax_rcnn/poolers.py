"""Multi-level ROI pooling for FPN heads: level assignment, ROIAlignV2, ROIAlign, ROIPool.

**Parity:** reproduces Detectron2 `modeling/poolers.py`: `assign_boxes_to_levels` (FPN
eqn. 1, `floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))` in float32,
clamped to [min_level, max_level]; area not clamped, so an inverted box has positive area) and
`ROIPooler.forward` with each `pooler_type` (spatial scale `1 / 2**level`; a single feature map
takes every box): "ROIAlignV2" = torchvision `roi_align(aligned=True)`, "ROIAlign" =
`roi_align(aligned=False)` (no half-pixel shift, ROI sides clamped to >= 1 feature px), both
through `jax_rcnn.kernels.roi_align` (Pallas or reference), and "ROIPool" = torchvision
`roi_pool` (`roi_max_pool` here, pure JAX only: corners scaled and rounded half away from zero,
sides `max(x2 - x1 + 1, 1)`, bins `[floor(p * bin), ceil((p + 1) * bin))` offset and clipped to
the map, max per bin, 0 for an empty bin, gradient to the first maximum in row-major order;
`sampling_ratio` unused). Deviations:

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
import numpy as np

from jax_rcnn import boxes as box_ops
from jax_rcnn import kernels

# Detectron2's `POOLER_TYPE` values (== jax_rcnn.config.POOLER_TYPES).
POOLER_TYPES = ("ROIAlignV2", "ROIAlign", "ROIPool")

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
    pooler_type: str = "ROIAlignV2",
) -> jax.Array:
    """Each box pooled on its FPN level (Detectron2 `ROIPooler`).

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
      pooler_type: "ROIAlignV2", "ROIAlign" (legacy, aligned=False) or "ROIPool" (always the
        pure-JAX `roi_max_pool`; `backend` and `sampling_ratio` are not used).

    Returns:
      `f32[B, R, S, S, C]` pooled features.

    Raises:
      ValueError: an unknown `pooler_type`.
    """
    if pooler_type not in POOLER_TYPES:
        raise ValueError(f"pooler_type = {pooler_type!r}: not one of {POOLER_TYPES}")
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
    scales = [1.0 / 2 ** (min_level + i) for i in range(num_levels)]
    if pooler_type == "ROIPool":
        pooled = roi_max_pool(
            list(features),
            flat,
            batch_idx,
            level_idx,
            spatial_scales=scales,
            output_size=output_size,
        )
    else:
        pooled = kernels.roi_align(
            list(features),
            flat,
            batch_idx,
            level_idx,
            spatial_scales=scales,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            aligned=pooler_type == "ROIAlignV2",
            backend=backend,
        )
    return pooled.reshape(num_images, num_boxes, *pooled.shape[1:])


def _round_half_away(x: jax.Array) -> jax.Array:
    """C's `round` (half away from zero); `jnp.round` rounds half to even."""
    t = jnp.trunc(x)
    return t + jnp.where(jnp.abs(x - t) >= 0.5, jnp.sign(x), 0.0)


def roi_max_pool(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    batch_idx: jax.Array,
    level_idx: jax.Array,
    *,
    spatial_scales: Sequence[float],
    output_size: int,
) -> jax.Array:
    """Multi-level ROIPool, pure JAX (torchvision `roi_pool` semantics per level).

    Each bin scans its window in row-major order for the first maximum (a loop over the largest
    window among all bins, gathering one element per bin and step), then gathers that element:
    the gradient goes to it alone, as torchvision's backward does; boxes get none.

    Args:
      features: per level `f32|bf16[B, H_l, W_l, C]` NHWC feature maps (same B and C).
      boxes: `f32[R, 4]` xyxy in input-image px (finite).
      batch_idx: `i32[R]` image of each box (clipped to `[0, B)`).
      level_idx: `i32[R]` index into `features` of each box (clipped to `[0, L)`).
      spatial_scales: per level `1 / stride`.
      output_size: S.

    Returns:
      `f32[R, S, S, C]`; 0 in bins that hold no feature pixel.

    Example: a 3x3 one-channel map `arange(9)` (scale 1), box `[0, 0, 1.4, 1.6]`, S=1: corners
    round to (0, 0, 1, 2), the window is rows 0-2 x cols 0-1, the max is 7.
    """
    num_levels = len(features)
    num_channels = features[0].shape[-1]
    shapes = [tuple(int(d) for d in f.shape[:3]) for f in features]
    bases = np.cumsum([0] + [b * h * w for b, h, w in shapes])[:-1]
    table = jnp.concatenate([f.reshape(-1, num_channels) for f in features], axis=0)
    level = jnp.clip(level_idx.astype(jnp.int32), 0, num_levels - 1)
    height = jnp.asarray([h for _, h, _ in shapes], jnp.int32)[level]
    width = jnp.asarray([w for _, _, w in shapes], jnp.int32)[level]
    images = jnp.asarray([b for b, _, _ in shapes], jnp.int32)[level]
    image = jnp.clip(batch_idx.astype(jnp.int32), 0, images - 1)
    row_base = jnp.asarray(bases, jnp.int32)[level] + image * height * width

    scale = jnp.asarray(spatial_scales, jnp.float32)[level]
    x1, y1, x2, y2 = (_round_half_away(boxes[:, k].astype(jnp.float32) * scale) for k in range(4))
    roi_w = jnp.maximum(x2 - x1 + 1, 1.0)
    roi_h = jnp.maximum(y2 - y1 + 1, 1.0)
    p = jnp.arange(output_size, dtype=jnp.float32)

    def bins(start, size, limit):  # [R, S] bin bounds in feature px, clipped to [0, limit]
        # A true float32 division, as torchvision's: XLA's CPU backend turns `/ S` into
        # `* (1 / S)` (7 / 3 -> 2.3333335, then ceil(3 * bin) = 8 instead of 7); an opaque
        # divisor of the same shape keeps the division.
        divisor = jax.lax.optimization_barrier(jnp.full(size.shape, output_size, jnp.float32))
        bin_size = (size / divisor)[:, None]
        lo = jnp.floor(p * bin_size) + start[:, None]
        hi = jnp.ceil((p + 1) * bin_size) + start[:, None]
        lim = limit[:, None].astype(jnp.float32)
        return (jnp.clip(lo, 0, lim).astype(jnp.int32), jnp.clip(hi, 0, lim).astype(jnp.int32))

    h_lo, h_hi = bins(y1, roi_h, height)
    w_lo, w_hi = bins(x1, roi_w, width)
    # [R, S, S]: bin (ph, pw); rows from h_lo[ph], cols from w_lo[pw].
    h_lo, h_hi = h_lo[:, :, None], h_hi[:, :, None]
    w_lo, w_hi = w_lo[:, None, :], w_hi[:, None, :]
    empty = (h_hi <= h_lo) | (w_hi <= w_lo)
    # Step t visits offset (t // max_w, t % max_w) of every bin's window.
    max_h = jnp.max(jnp.maximum(h_hi - h_lo, 0), initial=0)
    max_w = jnp.max(jnp.maximum(w_hi - w_lo, 0), initial=1)
    flat_table = jax.lax.stop_gradient(table)
    base = row_base[:, None, None]
    stride = width[:, None, None]

    def body(t, carry):
        best, best_row = carry
        h = h_lo + t // max_w
        w = w_lo + t % max_w
        inside = (h < h_hi) & (w < w_hi)
        row = jnp.where(inside, base + h * stride + w, 0)
        value = flat_table[row].astype(jnp.float32)  # [R, S, S, C]
        better = inside[..., None] & (value > best)
        return jnp.where(better, value, best), jnp.where(better, row[..., None], best_row)

    shape = (*empty.shape, num_channels)
    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.int32))
    _, best_row = jax.lax.fori_loop(0, max_h * max_w, body, init)
    channel = jnp.arange(num_channels, dtype=jnp.int32)
    out = table[best_row, channel].astype(jnp.float32)
    return jnp.where(empty[..., None], 0.0, out)
