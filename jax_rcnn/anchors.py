"""Anchor boxes for the RPN, one set per feature level.

**Parity:** reproduces Detectron2 `modeling/anchor_generator.py:DefaultAnchorGenerator`
(`generate_cell_anchors`, `_grid_anchors`, `_broadcast_params`): cell anchors of size s and
aspect ratio r (= h / w) have `w = sqrt(s*s / r)`, `h = r * w`, centred on 0, computed in
float64 and cast to float32, not rounded; order size-major then ratio. Grid anchors are the
cell anchors shifted by `(x * stride + offset * stride, y * stride + offset * stride)` in
float32, laid out (y, x, anchor). No deviation.

Anchors depend only on static shapes, so they are computed once on the host with NumPy and
returned as `np.ndarray` constants: calling these functions inside a `jit`-traced function
embeds the anchors as compile-time constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors of one level (Detectron2 `generate_cell_anchors`).

    Args:
      sizes: anchor sizes (sqrt of area) in input pixels.
      aspect_ratios: h / w ratios.

    Returns:
      `f32[A, 4]` xyxy, A = len(sizes) * len(aspect_ratios), order: for size, for ratio.

    Example:
      >>> cell_anchors([32], [1.0])
      array([[-16., -16.,  16.,  16.]], dtype=float32)
    """
    rows = []
    for size in sizes:
        size_area = float(size) ** 2.0
        for ratio in aspect_ratios:
            w = math.sqrt(size_area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4).astype(np.float32)


def _broadcast_params(params, num_levels: int, name: str) -> list:
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise ValueError(f"anchor {name} must be a non-empty list, got {params!r}")
    if not isinstance(params[0], (list, tuple)):
        return [list(params)] * num_levels
    if len(params) == 1:
        return list(params) * num_levels
    if len(params) != num_levels:
        raise ValueError(
            f"anchor {name} has {len(params)} entries but there are {num_levels} feature levels"
        )
    return list(params)


def grid_anchors(
    grid_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[Sequence[float]],
    offset: float,
) -> list[np.ndarray]:
    """All anchors of every level (Detectron2 `DefaultAnchorGenerator.forward`).

    Args:
      grid_sizes: per level (H_l, W_l) feature-map size.
      strides: per level stride in input pixels.
      sizes: per level anchor sizes; a single entry (or a flat list) is used for every level.
      aspect_ratios: per level h / w ratios; broadcast like `sizes`.
      offset: anchor-centre offset in units of stride, in [0, 1) (detectron2 configs use 0.0).

    Returns:
      Per level `f32[H_l * W_l * A_l, 4]` xyxy in input pixels; row `(y * W_l + x) * A_l + a`.

    Raises:
      ValueError: inconsistent numbers of levels or `offset` outside [0, 1).
    """
    num_levels = len(strides)
    if len(grid_sizes) != num_levels:
        raise ValueError(f"{len(grid_sizes)} grid sizes for {num_levels} strides")
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
    sizes = _broadcast_params(sizes, num_levels, "sizes")
    aspect_ratios = _broadcast_params(aspect_ratios, num_levels, "aspect_ratios")
    out = []
    for (height, width), stride, level_sizes, level_ratios in zip(
        grid_sizes, strides, sizes, aspect_ratios, strict=True
    ):
        base = cell_anchors(level_sizes, level_ratios)
        # Shifts are formed in float32 as in torch.arange(offset*stride, n*stride, stride).
        start = np.float32(offset * stride)
        shift_x = start + np.arange(width, dtype=np.float32) * np.float32(stride)
        shift_y = start + np.arange(height, dtype=np.float32) * np.float32(stride)
        sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4).astype(np.float32))
    return out
