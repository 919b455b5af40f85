"""Axis-aligned box geometry: area, IoU, clipping, format conversion and box coding.

**Parity:** reproduces Detectron2 `structures/boxes.py` (`Boxes.area`, `Boxes.clip`,
`Boxes.nonempty`, `pairwise_iou`, `BoxMode` XYWH_ABS <-> XYXY_ABS) and
`modeling/box_regression.py:Box2BoxTransform` (`get_deltas`, `apply_deltas`, class-specific
deltas, `scale_clamp = log(1000/16)` applied to dw/dh from above only, after dividing by the
weights). Deliberate deviations, all on inputs Detectron2 rejects or never produces:

* `pairwise_iou` and `nonempty` treat a box with any non-finite coordinate as empty (IoU 0,
  not nonempty), so NaN never leaks out of them.
* `Box2BoxTransform.get_deltas` returns zero deltas for a row whose source or target box is
  degenerate (non-finite, or width/height <= 0); Detectron2 asserts on empty sources and
  returns inf/NaN for empty targets. Padded slots therefore give finite, maskable targets.

`area` (not clamped: an inverted box has positive area), `clip` and `apply_deltas` keep
Detectron2's arithmetic, non-finite values included.

Input validation: at the host-side API boundary call `check_finite_boxes` on NumPy inputs; it
raises `ValueError` naming the argument. Inside `jit` use `sanitize_boxes`, which replaces
non-finite boxes with the canonical padding box `[0, 0, 0, 0]` and returns their validity.
Negative sizes (x2 < x1 or y2 < y1) are legal everywhere and mean "empty", as in Detectron2.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
    """Box areas, not clamped (Detectron2 `Boxes.area`).

    Args:
      boxes: `f32[..., 4]` xyxy.

    Returns:
      `f32[...]` `(x2 - x1) * (y2 - y1)`; an inverted box `[100, 100, 50, 50]` has area 2500.
    """
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def is_finite_box(boxes: jax.Array) -> jax.Array:
    """Whether all four coordinates are finite.

    Args:
      boxes: `f32[..., 4]`.

    Returns:
      `bool[...]`.
    """
    return jnp.all(jnp.isfinite(boxes), axis=-1)


def sanitize_boxes(boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replaces boxes with a non-finite coordinate by `[0, 0, 0, 0]` (jit-safe).

    Args:
      boxes: `f32[..., 4]` xyxy.

    Returns:
      `(boxes f32[..., 4], finite bool[...])`: finite boxes unchanged, others zeroed.
    """
    finite = is_finite_box(boxes)
    return jnp.where(finite[..., None], boxes, jnp.zeros_like(boxes)), finite


def check_finite_boxes(boxes, name: str) -> np.ndarray:
    """Host-side validation at the API boundary; not for use under `jit`.

    Args:
      boxes: array-like `f32[..., 4]` xyxy (NumPy or a concrete JAX array).
      name: argument name used in the error message.

    Returns:
      The boxes as a NumPy array.

    Raises:
      ValueError: the last axis is not 4, or some coordinate is NaN or infinite. Boxes with
        negative sizes are accepted (they are empty, as in Detectron2).
    """
    arr = np.asarray(boxes)
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4] (xyxy), got {arr.shape}")
    bad = ~np.all(np.isfinite(arr), axis=-1)
    if np.any(bad):
        rows = np.argwhere(bad)[:5].tolist()
        raise ValueError(
            f"{name} has {int(bad.sum())} box(es) with NaN/inf coordinates, e.g. at {rows}"
        )
    return arr


def pairwise_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """IoU of every pair (Detectron2 `pairwise_iou`).

    Args:
      boxes1: `f32[M, 4]` xyxy.
      boxes2: `f32[N, 4]` xyxy.

    Returns:
      `f32[M, N]` in [0, 1]; exactly 0 where the intersection is 0, so zero-area, inverted and
      non-finite boxes give 0, never NaN.
    """
    boxes1, _ = sanitize_boxes(boxes1)
    boxes2, _ = sanitize_boxes(boxes2)
    area1 = area(boxes1)
    area2 = area(boxes2)
    wh = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - jnp.maximum(
        boxes1[:, None, :2], boxes2[None, :, :2]
    )
    wh = jnp.maximum(wh, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    # Denominator is replaced where inter == 0 so the discarded branch cannot be 0/0.
    union = jnp.where(inter > 0, area1[:, None] + area2[None, :] - inter, 1.0)
    return jnp.where(inter > 0, inter / union, 0.0)


def clip(boxes: jax.Array, height, width) -> jax.Array:
    """Clamps x to [0, width] and y to [0, height] (Detectron2 `Boxes.clip`).

    Args:
      boxes: `f32[..., 4]` xyxy.
      height: scalar image height (Python number or traced).
      width: scalar image width (Python number or traced).

    Returns:
      `f32[..., 4]`; +-inf coordinates land on the border, NaN stays NaN.
    """
    height = jnp.asarray(height, boxes.dtype)
    width = jnp.asarray(width, boxes.dtype)
    x1 = jnp.clip(boxes[..., 0], 0, width)
    y1 = jnp.clip(boxes[..., 1], 0, height)
    x2 = jnp.clip(boxes[..., 2], 0, width)
    y2 = jnp.clip(boxes[..., 3], 0, height)
    return jnp.stack([x1, y1, x2, y2], axis=-1)


def nonempty(boxes: jax.Array, threshold: float = 0.0) -> jax.Array:
    """Boxes whose width and height both exceed `threshold` (Detectron2 `Boxes.nonempty`).

    Args:
      boxes: `f32[..., 4]` xyxy.
      threshold: minimum size (exclusive).

    Returns:
      `bool[...]`; False for boxes with a non-finite coordinate.
    """
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return (w > threshold) & (h > threshold) & is_finite_box(boxes)


def xywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """`f32[..., 4]` (x, y, w, h) -> `f32[..., 4]` (x1, y1, x2, y2) (Detectron2 XYWH_ABS)."""
    xy, wh = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([xy, xy + wh], axis=-1)


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
    """`f32[..., 4]` (x1, y1, x2, y2) -> `f32[..., 4]` (x, y, w, h) (Detectron2 XYWH_ABS)."""
    xy1, xy2 = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([xy1, xy2 - xy1], axis=-1)


def _centre_size(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    # Same operation order as Detectron2 (ctr = x1 + 0.5 * w) for bitwise-close parity.
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


@dataclasses.dataclass(frozen=True)
class Box2BoxTransform:
    """R-CNN box coding (Detectron2 `Box2BoxTransform`); hashable, so usable as a static arg.

    Attributes:
      weights: (wx, wy, ww, wh) multiplying (dx, dy, dw, dh); (1, 1, 1, 1) for the RPN,
        (10, 10, 5, 5) for the box head.
      scale_clamp: upper bound on dw, dh (after dividing by the weights) before `exp`.
    """

    weights: tuple[float, float, float, float]
    scale_clamp: float = _DEFAULT_SCALE_CLAMP

    def get_deltas(self, src_boxes: jax.Array, target_boxes: jax.Array) -> jax.Array:
        """Deltas that turn `src_boxes` into `target_boxes`.

        Args:
          src_boxes: `f32[..., 4]` xyxy, e.g. anchors or proposals.
          target_boxes: `f32[..., 4]` xyxy, e.g. matched gt boxes (broadcastable with src).

        Returns:
          `f32[..., 4]` (dx, dy, dw, dh); zero for rows where either box is degenerate
          (non-finite or width/height <= 0), see module docstring.
        """
        ok = nonempty(src_boxes) & nonempty(target_boxes)
        unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], src_boxes.dtype)
        # Sanitise before computing so masked rows cannot produce NaN (also in gradients).
        src = jnp.where(ok[..., None], src_boxes, unit)
        tgt = jnp.where(ok[..., None], target_boxes, unit)
        sx, sy, sw, sh = _centre_size(src)
        tx, ty, tw, th = _centre_size(tgt)
        wx, wy, ww, wh = self.weights
        dx = wx * (tx - sx) / sw
        dy = wy * (ty - sy) / sh
        dw = ww * jnp.log(tw / sw)
        dh = wh * jnp.log(th / sh)
        deltas = jnp.stack([dx, dy, dw, dh], axis=-1)
        return jnp.where(ok[..., None], deltas, 0.0)

    def apply_deltas(self, deltas: jax.Array, boxes: jax.Array) -> jax.Array:
        """Applies `k` sets of deltas to each box (class-specific when k > 1).

        Args:
          deltas: `f32[..., 4 * k]`, groups of (dx, dy, dw, dh).
          boxes: `f32[..., 4]` xyxy, leading axes broadcastable with those of `deltas`.

        Returns:
          `f32[..., 4 * k]` xyxy per group. Huge negative dw/dh give zero-size boxes; +inf is
          clamped; NaN inputs give NaN outputs (the proposal stage filters non-finite boxes).
        """
        num_k = deltas.shape[-1] // 4
        d = deltas.reshape(*deltas.shape[:-1], num_k, 4)
        cx, cy, w, h = _centre_size(boxes.astype(deltas.dtype)[..., None, :])
        wx, wy, ww, wh = self.weights
        dx = d[..., 0] / wx
        dy = d[..., 1] / wy
        dw = jnp.minimum(d[..., 2] / ww, self.scale_clamp)
        dh = jnp.minimum(d[..., 3] / wh, self.scale_clamp)
        pcx = dx * w + cx
        pcy = dy * h + cy
        pw = jnp.exp(dw) * w
        ph = jnp.exp(dh) * h
        out = jnp.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=-1)
        return out.reshape(deltas.shape)
