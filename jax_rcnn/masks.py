"""Instance masks: pasting predicted masks into the image, cropping gt masks into targets.

**Parity:** `paste_masks_in_image` reproduces Detectron2 `layers/mask_ops.py:paste_masks_in_image`
on its CPU path: each `M x M` probability map is sampled at the image pixel centres with
`F.grid_sample(align_corners=False, padding_mode="zeros")` over the box, thresholded with
`>= threshold`, and not clipped to the box (up to ~1.5 px outside it can be set). The float32
arithmetic follows PyTorch's vectorised CPU `grid_sampler_2d` kernel operation by operation
(normalise, unnormalise, floor, four corner weights, the same summation order), and only the
window `[floor(x1) - 1, ceil(x2) + 1) x [floor(y1) - 1, ceil(y2) + 1)` that Detectron2 evaluates
on CPU can be set. `crop_and_resize` reproduces `structures/masks.py:BitMasks.crop_and_resize`:
ROIAlign `(M, M)`, scale 1, `sampling_ratio=0`, `aligned=True` of the float mask, computed by
`jax_rcnn.kernels.roi_align` (no second copy of ROIAlign). It returns the soft values;
Detectron2 thresholds them at 0.5 right away and so does Mask R-CNN training (`>= 0.5`).
Deliberate deviation: a box with a non-finite coordinate pastes an all-False mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_rcnn import kernels


def _grid_axis(
    boxes_lo: jax.Array, boxes_hi: jax.Array, size: int, mask_size: int
) -> tuple[jax.Array, ...]:
    """Sampling positions along one image axis, PyTorch's float32 operation order.

    Args:
      boxes_lo, boxes_hi: `f32[D, 1]` box edges along the axis (x1, x2 or y1, y2).
      size: image size along the axis.
      mask_size: M.

    Returns:
      `(low i32[D, size], frac_low f32, frac_high f32, low_in bool, high_in bool,
      in_window bool)`: the lower mask cell of each pixel centre, its two linear weights
      (`1 - frac`, `frac`), whether each of the two cells lies inside the mask (zero padding),
      and whether the pixel is inside Detectron2's CPU paste window.
    """
    centres = jnp.arange(size, dtype=jnp.float32)[None, :] + 0.5
    grid = (centres - boxes_lo) / (boxes_hi - boxes_lo) * 2.0 - 1.0
    pos = (grid + 1.0) * (mask_size / 2.0) - 0.5
    # Non-finite positions (zero-size or non-finite boxes) read nothing, like PyTorch, whose
    # int conversion sends them out of bounds; the clip keeps the int cast defined and only
    # moves positions that are out of bounds on both corners anyway.
    pos = jnp.where(jnp.isfinite(pos), pos, -2.0 * mask_size)
    pos = jnp.clip(pos, -2.0 * mask_size, 2.0 * mask_size)
    floor = jnp.floor(pos)
    frac = pos - floor
    low = floor.astype(jnp.int32)
    low_in = (low > -1) & (low < mask_size)
    high_in = (low + 1 > -1) & (low + 1 < mask_size)
    pixels = jnp.arange(size, dtype=jnp.float32)[None, :]
    start = jnp.maximum(jnp.floor(boxes_lo) - 1.0, 0.0)
    stop = jnp.minimum(jnp.ceil(boxes_hi) + 1.0, float(size))
    in_window = (pixels >= start) & (pixels < stop)
    return low, 1.0 - frac, frac, low_in, high_in, in_window


def _take_masked(values: jax.Array, index: jax.Array, inside: jax.Array, axis: int) -> jax.Array:
    """Per-detection `take` along `axis` (1 or 2) of `values f32[D, A, B]`, 0 where not inside.

    Args:
      values: `f32[D, A, B]`.
      index: `i32[D, K]` positions along `axis`, any value where `inside` is False.
      inside: `bool[D, K]`.
      axis: 1 (result `[D, K, B]`) or 2 (result `[D, A, K]`).

    Returns:
      The selected values with out-of-bounds entries set to 0 (PyTorch's masked gather).
    """
    index = jnp.clip(index, 0, values.shape[axis] - 1)
    taken = jax.vmap(lambda v, i: jnp.take(v, i, axis=axis - 1))(values, index)
    inside = inside[:, :, None] if axis == 1 else inside[:, None, :]
    return jnp.where(inside, taken, 0.0)


def paste_masks_in_image(
    mask_probs: jax.Array,
    boxes: jax.Array,
    image_size: tuple[int, int],
    threshold: float = 0.5,
) -> jax.Array:
    """Pastes per-detection mask probabilities into the image (Detectron2 semantics).

    Vectorised over detections; memory `O(D * H * W)`.

    Args:
      mask_probs: `f32[D, M, M]` probabilities in [0, 1] (sigmoid of the predicted class's
        mask logits).
      boxes: `f32[D, 4]` xyxy, abs px in the `image_size` frame.
      image_size: static `(H, W)`.
      threshold: a pixel is set when its bilinear probability is `>= threshold`.

    Returns:
      `bool[D, H, W]`.

    Example: a 28x28 mask of ones with box `[10, 10, 20, 20]` sets exactly pixels 10..19 on
    both axes: the centre 9.5 maps to mask position -1.9 (both corners in the zero padding),
    10.5 to 0.9 and 19.5 to 26.1 (inside), 20.5 to 28.9 (padding).
    """
    height, width = image_size
    mask_size = mask_probs.shape[-1]
    probs = mask_probs.astype(jnp.float32)
    boxes = boxes.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(boxes), axis=-1)
    boxes = jnp.where(finite[:, None], boxes, 0.0)
    x_low, e, w, x_low_in, x_high_in, x_window = _grid_axis(
        boxes[:, 0:1], boxes[:, 2:3], width, mask_size
    )
    y_low, s, n, y_low_in, y_high_in, y_window = _grid_axis(
        boxes[:, 1:2], boxes[:, 3:4], height, mask_size
    )
    # Exact zero padding as two cheap selections: columns of the small map first (D, M, W),
    # then whole rows of W values, so the big (D, H, W) gathers copy contiguous slices.
    cols_west = _take_masked(probs, x_low, x_low_in, axis=2)
    cols_east = _take_masked(probs, x_low + 1, x_high_in, axis=2)
    nw = _take_masked(cols_west, y_low, y_low_in, axis=1)
    ne = _take_masked(cols_east, y_low, y_low_in, axis=1)
    sw = _take_masked(cols_west, y_low + 1, y_high_in, axis=1)
    se = _take_masked(cols_east, y_low + 1, y_high_in, axis=1)
    s, n = s[:, :, None], n[:, :, None]
    e, w = e[:, None, :], w[:, None, :]
    # PyTorch: weights nw = s*e, ne = s*w, sw = n*e, se = n*w, summed left to right.
    value = nw * (s * e) + ne * (s * w) + sw * (n * e) + se * (n * w)
    window = y_window[:, :, None] & x_window[:, None, :] & finite[:, None, None]
    return (value >= threshold) & window


def crop_and_resize(
    masks: jax.Array,
    boxes: jax.Array,
    gt_index: jax.Array,
    mask_size: int,
    *,
    backend: str = "reference",
) -> jax.Array:
    """Crops gt masks by boxes and resamples them to `mask_size` (Mask R-CNN targets).

    Args:
      masks: `bool|f32[G, H, W]` full-image gt masks (padded slots may be anything).
      boxes: `f32[N, 4]` xyxy, abs px in the mask frame (the ROIs, usually proposals).
      gt_index: `i32[N]` gt mask of each box (clipped to `[0, G)`).
      mask_size: static M.
      backend: `jax_rcnn.kernels` backend of the ROIAlign.

    Returns:
      `f32[N, M, M]` soft targets in [0, 1]; Detectron2's binary target is `>= 0.5`.
      No gradient flows to `boxes`.
    """
    features = masks.astype(jnp.float32)[..., None]
    pooled = kernels.roi_align(
        [features],
        boxes,
        gt_index.astype(jnp.int32),
        jnp.zeros(boxes.shape[:1], jnp.int32),
        spatial_scales=(1.0,),
        output_size=mask_size,
        sampling_ratio=0,
        aligned=True,
        backend=backend,
    )
    return pooled[..., 0]
