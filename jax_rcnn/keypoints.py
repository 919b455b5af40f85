"""Keypoint R-CNN geometry: training ROIs, heatmap targets, loss, heatmap decoding.

**Parity:** Detectron2's `roi_heads.py:select_proposals_with_visible_keypoints`,
`structures/keypoints.py:_keypoints_to_heatmap` and `heatmaps_to_keypoints`, and
`keypoint_head.py:keypoint_rcnn_loss`:

* a training ROI carries keypoints when one of its matched gt keypoints with v >= 1 lies in the
  proposal box, bounds inclusive;
* target `x_h = floor((x - x0) * (S / (x1 - x0)))` in float32 (S = 56), `x == x1` -> S - 1,
  likewise y; valid = `0 <= x_h, y_h < S` and v > 0; index `y_h * S + x_h`;
* the loss is the softmax cross-entropy over the S*S locations, summed over valid targets;
* decoding resizes each ROI's S x S logits to (ceil(h), ceil(w)) with PyTorch's bicubic
  (A = -0.75, `align_corners=False`, source indices clamped, no antialias), takes the first
  maximum (row-major), `x = (x_int + 0.5) * w / ceil(w) + x0` and the score
  `1 / sum_SxS exp(low-res logit - upsampled max)`.

Static shapes: the resize output size varies per ROI, so each ROI is resized into a square
bucket (`resize_buckets`: the smallest that holds ceil(h) and ceil(w)) by separable cubic weight
matrices whose rows beyond the ROI's size are masked; ROIs run one after another
(`lax.map`), each on its own bucket's branch (`lax.switch`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def visible_in_box(keypoints: jax.Array, boxes: jax.Array) -> jax.Array:
    """Which ROIs have a visible (v >= 1) keypoint inside their box, bounds inclusive.

    Args:
      keypoints: `f32[..., K, 3]` (x, y, v) of each ROI's matched gt, resized-input pixels.
      boxes: `f32[..., 4]` xyxy proposal boxes.

    Returns:
      `bool[...]`.
    """
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    b = boxes[..., None, :]
    inside = (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3])
    return jnp.any(inside & (v >= 1), axis=-1)


def keypoints_to_heatmap(
    keypoints: jax.Array, rois: jax.Array, heatmap_size: int
) -> tuple[jax.Array, jax.Array]:
    """Heatmap targets of keypoints in their ROIs (`_keypoints_to_heatmap`).

    Args:
      keypoints: `f32[..., K, 3]` (x, y, v).
      rois: `f32[..., 4]` xyxy (finite, positive width and height where used).
      heatmap_size: S (56).

    Returns:
      `(index i32[..., K], valid bool[...,  K])`: `y_h * S + x_h` (0 where invalid).
    """
    x0, y0, x1, y1 = (rois[..., i, None] for i in range(4))
    scale_x = heatmap_size / (x1 - x0)
    scale_y = heatmap_size / (y1 - y0)
    x, y = keypoints[..., 0], keypoints[..., 1]
    xh = jnp.floor((x - x0) * scale_x)
    yh = jnp.floor((y - y0) * scale_y)
    xh = jnp.where(x == x1, heatmap_size - 1, xh)
    yh = jnp.where(y == y1, heatmap_size - 1, yh)
    valid = (xh >= 0) & (yh >= 0) & (xh < heatmap_size) & (yh < heatmap_size)
    valid = valid & (keypoints[..., 2] > 0)
    index = jnp.where(valid, yh * heatmap_size + xh, 0).astype(jnp.int32)
    return index, valid


def keypoint_ce_sum(logits: jax.Array, index: jax.Array, valid: jax.Array) -> jax.Array:
    """Summed softmax cross-entropy over the S*S locations on the valid targets.

    Args:
      logits: `f32[..., S, S, K]` heatmap logits (NHWC head output).
      index: `i32[..., K]` target `y * S + x`.
      valid: `bool[..., K]`.

    Returns:
      `f32[]`.
    """
    s = logits.shape[-2]
    flat = jnp.moveaxis(logits, -1, -3).reshape(*index.shape, s * s).astype(jnp.float32)
    logz = jax.nn.logsumexp(flat, axis=-1)
    picked = jnp.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, logz - picked, 0.0))


def _cubic_weights(out_size: jax.Array, bucket: int, in_size: int) -> jax.Array:
    """`f32[bucket, in_size]`: PyTorch bicubic (`align_corners=False`, A = -0.75) from
    `in_size` to a traced `out_size <= bucket` along one axis; rows >= out_size are 0."""
    scale = jnp.float32(in_size) / out_size.astype(jnp.float32)
    dst = jnp.arange(bucket, dtype=jnp.float32)
    real = scale * (dst + 0.5) - 0.5
    idx = jnp.floor(real)
    t = real - idx
    a = CUBIC_A

    def conv1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def conv2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    coeffs = (conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t))
    cols = jnp.arange(in_size)
    w = jnp.zeros((bucket, in_size), jnp.float32)
    for k, c in enumerate(coeffs):
        src = jnp.clip(idx.astype(jnp.int32) - 1 + k, 0, in_size - 1)
        w = w + c[:, None] * (src[:, None] == cols[None, :])
    return jnp.where((dst < out_size)[:, None], w, 0.0)


def resize_buckets(max_size: int, smallest: int = 64) -> tuple[int, ...]:
    """Square bucket sides for `heatmaps_to_keypoints`: powers of two from `smallest`, the last
    one `max_size` (the largest ROI side, e.g. the padded image's longer side)."""
    sizes = []
    s = smallest
    while s < max_size:
        sizes.append(s)
        s *= 2
    return (*sizes, max_size)


def heatmaps_to_keypoints(
    maps: jax.Array, rois: jax.Array, valid: jax.Array, max_size: int
) -> jax.Array:
    """Detectron2's `heatmaps_to_keypoints`: keypoint locations and scores of each ROI.

    Args:
      maps: `f32[R, K, S, S]` heatmap logits (NCHW per ROI).
      rois: `f32[R, 4]` xyxy boxes (final detections, resized-input pixels).
      valid: `bool[R]`; invalid ROIs give zeros.
      max_size: static bound on ceil(box side) (the padded image's longer side).

    Returns:
      `f32[R, K, 4]`: x, y (resized-input pixels), the upsampled logit at the maximum, score.
    """
    num_k, s = maps.shape[1], maps.shape[-1]
    buckets = resize_buckets(max_size)
    rois = jnp.where(valid[:, None], rois, jnp.asarray([0.0, 0.0, 1.0, 1.0]))
    widths = jnp.maximum(rois[:, 2] - rois[:, 0], 1.0)
    heights = jnp.maximum(rois[:, 3] - rois[:, 1], 1.0)
    widths_ceil, heights_ceil = jnp.ceil(widths), jnp.ceil(heights)
    side = jnp.minimum(jnp.maximum(widths_ceil, heights_ceil), max_size)
    which = jnp.searchsorted(jnp.asarray(buckets, jnp.float32), side)

    def branch(bucket):
        def run(m, hc, wc):
            wy = _cubic_weights(hc, bucket, s)  # [bucket, S]
            wx = _cubic_weights(wc, bucket, s)
            hp = jax.lax.Precision.HIGHEST
            up = jnp.einsum("kyx,jx->kyj", m, wx, precision=hp)
            up = jnp.einsum("iy,kyj->kij", wy, up, precision=hp)  # [K, bucket, bucket]
            inside = (jnp.arange(bucket)[:, None] < hc) & (jnp.arange(bucket)[None, :] < wc)
            flat = jnp.where(inside[None], up, -jnp.inf).reshape(num_k, -1)
            pos = jnp.argmax(flat, axis=1)
            top = jnp.max(flat, axis=1)
            return pos % bucket, pos // bucket, top

        return run

    def one(args):
        m, b, hc, wc = args
        return jax.lax.switch(b, [branch(bk) for bk in buckets], m, hc, wc)

    x_int, y_int, top = jax.lax.map(
        one, (maps.astype(jnp.float32), which, heights_ceil, widths_ceil)
    )
    low = maps.astype(jnp.float32).reshape(*maps.shape[:2], -1)
    score = 1.0 / jnp.sum(jnp.exp(low - top[..., None]), axis=-1)
    x = (x_int.astype(jnp.float32) + 0.5) * (widths / widths_ceil)[:, None] + rois[:, 0, None]
    y = (y_int.astype(jnp.float32) + 0.5) * (heights / heights_ceil)[:, None] + rois[:, 1, None]
    out = jnp.stack([x, y, top, score], axis=-1)
    return jnp.where(valid[:, None, None], out, 0.0)
