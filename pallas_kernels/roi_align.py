"""Multi-level ROIAlign: the pure-JAX reference (`roi_align_reference`).

**Parity:** reproduces torchvision `roi_align` (`csrc/ops/cpu/roi_align_kernel.cpp`), the op
behind Detectron2 `layers/roi_align.py:ROIAlign` and `modeling/poolers.py:ROIPooler`:
`aligned=True` shifts box corners by -0.5 feature px and keeps sub-pixel sizes (no minimum of
1); `sampling_ratio=0` takes an adaptive `ceil(roi_h / S) x ceil(roi_w / S)` grid of samples per
bin, per ROI; a sample outside `[-1, H] x [-1, W]` is 0; negative coordinates clamp to 0; a
sample with `y_low >= H - 1` collapses both rows to `H - 1` (same for x); each bin is the
sum over its samples divided by `max(count, 1)`. Boxes get no gradient (like torchvision, whose
op has no box gradient; Detectron2 detaches proposals anyway). Deliberate deviations, only on
inputs torchvision does not define: a box with a non-finite coordinate pools to zeros, and the
per-side sample grid is capped at `MAX_GRID` (128), which only ROIs larger than `128 * S`
feature px reach.

Layout (see `../shared/PALLAS.md` 3.1): the NHWC levels are flattened into one `(T, C)` table
of feature rows; every sample reads four C-vectors from it. The adaptive grid is data
dependent, so the samples are visited by a loop over the flat sample index
`t < max_r(gh_r * gw_r)`; each step gathers `(R, S*S, C)` per corner and accumulates in f32,
which keeps memory at `O(R * S^2 * C)` whatever the grid. Reverse mode through that loop is not
available, so a `jax.custom_vjp` runs the same loop backwards with a scatter-add into the table.
Cost note: a loop's trip count is the largest grid among the ROIs it visits, so the ROIs are
sorted by sample count and cut into up to `NUM_SEGMENTS` groups, an outer loop visiting each
group with its own trip count (`_segments`; per ROI the same samples in the same order, so the
same values; one compiled loop body whatever the number of groups): a few thin
proposals needing 20 samples per bin no longer make all 2048 ROIs of a training step run 20
steps. Padded ROI slots should still hold the canonical box `[0, 0, 0, 0]` (grid 0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._triton import require_triton

try:
    from jax.experimental.pallas import triton as pltriton
except ImportError:  # a JAX without Pallas-Triton (docs/kernels.md): the reference still works
    pltriton = None

MAX_GRID = 128
"""Cap on samples per bin side. Exact for ROIs up to `128 * S` feature px per side (3584 image
px on P2 at S=7, 3584 px for 28x28 mask targets); it bounds the loop for garbage boxes."""


def _roi_params(
    boxes: jax.Array,
    batch_idx: jax.Array,
    level_idx: jax.Array,
    level_shapes: Sequence[tuple[int, int, int]],
    spatial_scales: Sequence[float],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[jax.Array, jax.Array]:
    """Per-ROI sampling parameters, vectorised over ROIs.

    Args:
      boxes: `f32[R, 4]` xyxy in image px.
      batch_idx: `i32[R]`.
      level_idx: `i32[R]`.
      level_shapes: per level `(B, H_l, W_l)`, static.
      spatial_scales: per level `1 / stride`, static.
      output_size: S.
      sampling_ratio: samples per bin side, 0 = adaptive.
      aligned: ROIAlignV2 half-pixel shift.

    Returns:
      `(fparams f32[R, 4], iparams i32[R, 5])`: `(start_x, start_y, bin_w, bin_h)` in feature px
      and `(row_base, H, W, grid_h, grid_w)`, where `row_base` is the table row of pixel (0, 0)
      of the ROI's image on its level.
    """
    num_levels = len(level_shapes)
    bases = np.cumsum([0] + [b * h * w for b, h, w in level_shapes])[:-1]
    level = jnp.clip(level_idx.astype(jnp.int32), 0, num_levels - 1)
    num_images = jnp.asarray([b for b, _, _ in level_shapes], jnp.int32)[level]
    height = jnp.asarray([h for _, h, _ in level_shapes], jnp.int32)[level]
    width = jnp.asarray([w for _, _, w in level_shapes], jnp.int32)[level]
    image = jnp.clip(batch_idx.astype(jnp.int32), 0, num_images - 1)
    row_base = jnp.asarray(bases, jnp.int32)[level] + image * height * width

    finite = jnp.all(jnp.isfinite(boxes), axis=-1, keepdims=True)
    boxes = jnp.where(finite, boxes.astype(jnp.float32), 0.0)
    scale = jnp.asarray(spatial_scales, jnp.float32)[level]
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, k] * scale - offset for k in range(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        # Legacy ROIAlign forces malformed boxes to 1x1 feature px.
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    if sampling_ratio > 0:
        grid_h = grid_w = jnp.full_like(row_base, sampling_ratio)
    else:
        # Negative sizes give no samples, exactly like torchvision's empty loops.
        grid_h = jnp.clip(jnp.ceil(roi_h / output_size), 0, MAX_GRID).astype(jnp.int32)
        grid_w = jnp.clip(jnp.ceil(roi_w / output_size), 0, MAX_GRID).astype(jnp.int32)
    grid_h = jnp.where(finite[:, 0], grid_h, 0)
    grid_w = jnp.where(finite[:, 0], grid_w, 0)
    fparams = jnp.stack([x1, y1, bin_w, bin_h], axis=1)
    iparams = jnp.stack([row_base, height, width, grid_h, grid_w], axis=1)
    return fparams, iparams


def _bilinear_corners(
    y: jax.Array, x: jax.Array, height: jax.Array, width: jax.Array
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """torchvision `bilinear_interpolate` rules, vectorised.

    Args:
      y, x: `f32[...]` sample positions in feature px.
      height, width: `i32[...]` (broadcastable) level size.

    Returns:
      `(offsets, weights)`: four `i32[...]` row offsets `y * W + x` inside the image and four
      `f32[...]` weights (all 0 for an empty sample), corner order (low, low), (low, high),
      (high, low), (high, high) as (y, x).
    """
    h_f, w_f = height.astype(jnp.float32), width.astype(jnp.float32)
    inside = (y >= -1.0) & (y <= h_f) & (x >= -1.0) & (x <= w_f)
    y, x = jnp.maximum(y, 0.0), jnp.maximum(x, 0.0)
    # Clip before the int cast so garbage positions cannot overflow; both clips only touch
    # samples that the border rule below collapses anyway.
    y_low = jnp.floor(jnp.minimum(y, h_f)).astype(jnp.int32)
    x_low = jnp.floor(jnp.minimum(x, w_f)).astype(jnp.int32)
    y_top, x_top = y_low >= height - 1, x_low >= width - 1
    y_low = jnp.where(y_top, height - 1, y_low)
    x_low = jnp.where(x_top, width - 1, x_low)
    y_high = jnp.where(y_top, y_low, y_low + 1)
    x_high = jnp.where(x_top, x_low, x_low + 1)
    y = jnp.where(y_top, y_low.astype(jnp.float32), y)
    x = jnp.where(x_top, x_low.astype(jnp.float32), x)
    ly, lx = y - y_low.astype(jnp.float32), x - x_low.astype(jnp.float32)
    hy, hx = 1.0 - ly, 1.0 - lx
    keep = inside.astype(jnp.float32)
    offsets = (
        y_low * width + x_low,
        y_low * width + x_high,
        y_high * width + x_low,
        y_high * width + x_high,
    )
    weights = (hy * hx * keep, hy * lx * keep, ly * hx * keep, ly * lx * keep)
    return offsets, weights


def _sample_step(
    t: jax.Array, fparams: jax.Array, iparams: jax.Array, output_size: int
) -> tuple[jax.Array, jax.Array]:
    """Table rows and bilinear weights of flat sample `t` of every bin of every ROI.

    Args:
      t: `i32[]` flat sample index `iy * grid_w + ix`.
      fparams: `f32[R, 4]` from `_roi_params`.
      iparams: `i32[R, 5]` from `_roi_params`.
      output_size: S.

    Returns:
      `(rows i32[R, S*S*4], weights f32[R, S*S*4])`, corner-minor; weights are 0 for
      `t >= grid_h * grid_w` and for empty samples.
    """
    s = output_size
    start_x, start_y, bin_w, bin_h = (fparams[:, k, None] for k in range(4))
    row_base, height, width, grid_h, grid_w = (iparams[:, k, None] for k in range(5))
    iy = t // jnp.maximum(grid_w, 1)
    ix = t - iy * grid_w
    active = (t < grid_h * grid_w).astype(jnp.float32)
    bins = jnp.arange(s * s, dtype=jnp.int32)[None, :]
    ph = (bins // s).astype(jnp.float32)
    pw = (bins % s).astype(jnp.float32)
    # Same association as torchvision: (start + p * bin) + (i + 0.5) * bin / grid.
    y = start_y + ph * bin_h + (iy.astype(jnp.float32) + 0.5) * bin_h / jnp.maximum(grid_h, 1)
    x = start_x + pw * bin_w + (ix.astype(jnp.float32) + 0.5) * bin_w / jnp.maximum(grid_w, 1)
    offsets, weights = _bilinear_corners(y, x, height, width)
    rows = jnp.stack(offsets, axis=-1) + row_base[..., None]
    weights = jnp.stack(weights, axis=-1) * active[..., None]
    r = fparams.shape[0]
    return rows.reshape(r, s * s * 4), weights.reshape(r, s * s * 4)


NUM_SEGMENTS = 16
"""The reference visits the ROIs in up to this many groups of similar sample counts."""

MIN_SEGMENT = 64
"""Fewest ROIs per group: smaller inputs run as one group."""


def _segments(fparams: jax.Array, iparams: jax.Array, *extra: jax.Array):
    """ROIs sorted by sample count (largest first) and cut into equal groups.

    The sample loop runs to the largest `grid_h * grid_w` of the ROIs it visits; a few long or
    large ROIs (early in training: thin proposals on P2 with 20 samples per bin, where most
    need 1-4) would make every ROI run that many steps. Each group runs the loop to its own
    largest count, so the work follows the sorted counts instead. Per ROI, the samples are
    still added in the same order `t = 0, 1, ...`, so the pooled values are unchanged. The
    groups are visited by an outer loop (one compiled body, whatever the number of groups).

    Args:
      fparams: `f32[R, 4]`, iparams: `i32[R, 5]` from `_roi_params`.
      *extra: arrays with leading dim R permuted along (the output cotangent in the VJP).

    Returns:
      `(order i32[R], size, steps i32[k], sorted)`: `sorted` holds `(fparams, iparams, *extra)`
      in sorted order, padded at the end with zero-sample rows to `k * size` rows; group `g` is
      rows `[g * size, (g + 1) * size)` and needs `steps[g]` loop steps.
    """
    r = fparams.shape[0]
    k = min(NUM_SEGMENTS, max(r // MIN_SEGMENT, 1))
    count = iparams[:, 3] * iparams[:, 4]
    order = jnp.argsort(-count, stable=True)
    pad = (-r) % k
    arrays = tuple(
        jnp.pad(jnp.take(a, order, axis=0), [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        for a in (fparams, iparams, *extra)
    )
    size = (r + pad) // k
    steps = jnp.max(jnp.pad(count[order], (0, pad)).reshape(k, size), axis=1)
    return order, size, steps, arrays


def _pool_group(
    table: jax.Array, fparams: jax.Array, iparams: jax.Array, output_size: int, steps: jax.Array
):
    r, c, s = fparams.shape[0], table.shape[1], output_size

    def body(t, acc):
        rows, weights = _sample_step(t, fparams, iparams, s)
        values = jnp.take(table, rows, axis=0, mode="clip").astype(jnp.float32)
        contrib = (values * weights[..., None]).reshape(r, s * s, 4, c)
        # torchvision's order: ((w1 v1 + w2 v2) + w3 v3) + w4 v4, then added to the bin.
        sample = ((contrib[:, :, 0] + contrib[:, :, 1]) + contrib[:, :, 2]) + contrib[:, :, 3]
        return acc + sample

    acc = lax.fori_loop(0, steps, body, jnp.zeros((r, s * s, c), jnp.float32))
    count = jnp.maximum(iparams[:, 3] * iparams[:, 4], 1).astype(jnp.float32)
    return acc / count[:, None, None]


def _pool_forward(table: jax.Array, fparams: jax.Array, iparams: jax.Array, output_size: int):
    r, c, s = fparams.shape[0], table.shape[1], output_size
    if r == 0:
        return jnp.zeros((0, s, s, c), jnp.float32)
    order, size, steps, (fp, ip) = _segments(fparams, iparams)

    def group(g, out):
        rows = (lax.dynamic_slice_in_dim(a, g * size, size) for a in (fp, ip))
        pooled = _pool_group(table, *rows, s, steps[g])
        return lax.dynamic_update_slice_in_dim(out, pooled, g * size, axis=0)

    num = fp.shape[0]
    pooled = lax.fori_loop(0, num // size, group, jnp.zeros((num, s * s, c), jnp.float32))
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(r, dtype=order.dtype))
    return jnp.take(pooled[:r], inverse, axis=0).reshape(r, s, s, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _pool(
    table: jax.Array, fparams: jax.Array, iparams: jax.Array, output_size: int, num_rows: int
) -> jax.Array:
    """`f32[R, S, S, C]` ROIAlign of `table f32|bf16[T, C]` (T = `num_rows`, static)."""
    del num_rows
    return _pool_forward(table, fparams, iparams, output_size)


def _pool_fwd(table, fparams, iparams, output_size, num_rows):
    del num_rows
    out = _pool_forward(table, fparams, iparams, output_size)
    # A zero-row slice carries C and the dtype without keeping the table alive.
    return out, (table[:0], fparams, iparams)


def _pool_bwd(output_size, num_rows, residuals, g):
    table_like, fparams, iparams = residuals
    r, c, s = fparams.shape[0], table_like.shape[1], output_size
    if r == 0:
        return jnp.zeros((num_rows, c), table_like.dtype), jnp.zeros_like(fparams), None
    count = jnp.maximum(iparams[:, 3] * iparams[:, 4], 1).astype(jnp.float32)
    g = g.astype(jnp.float32).reshape(r, s * s, 1, c) / count[:, None, None, None]
    _, size, steps, sorted_ = _segments(fparams, iparams, g)

    def group(k, dtable):
        fp, ip, gg = (lax.dynamic_slice_in_dim(a, k * size, size) for a in sorted_)

        def body(t, dtable):
            rows, weights = _sample_step(t, fp, ip, s)
            updates = weights.reshape(size, s * s, 4, 1) * gg
            return dtable.at[rows.reshape(-1)].add(updates.reshape(-1, c), mode="drop")

        return lax.fori_loop(0, steps[k], body, dtable)

    num_groups = sorted_[0].shape[0] // size
    dtable = lax.fori_loop(0, num_groups, group, jnp.zeros((num_rows, c), jnp.float32))
    return dtable.astype(table_like.dtype), jnp.zeros_like(fparams), None


_pool.defvjp(_pool_fwd, _pool_bwd)


def _table_and_params(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    batch_idx: jax.Array,
    level_idx: jax.Array,
    spatial_scales: Sequence[float],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The flat feature table and per-ROI parameters shared by the reference and the kernels.

    Returns:
      `(table f32|bf16[T, C], fparams f32[R, 4], iparams i32[R, 5])`, see `_roi_params`;
      `fparams` carry no gradient.
    """
    if len(features) != len(spatial_scales):
        raise ValueError(
            f"got {len(features)} feature levels but {len(spatial_scales)} spatial_scales"
        )
    level_shapes = [tuple(int(d) for d in f.shape[:3]) for f in features]
    num_channels = features[0].shape[-1]
    table = jnp.concatenate([f.reshape(-1, num_channels) for f in features], axis=0)
    fparams, iparams = _roi_params(
        boxes,
        batch_idx,
        level_idx,
        level_shapes,
        spatial_scales,
        output_size,
        sampling_ratio,
        aligned,
    )
    return table, lax.stop_gradient(fparams), iparams


def roi_align_reference(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    batch_idx: jax.Array,
    level_idx: jax.Array,
    *,
    spatial_scales: tuple[float, ...],
    output_size: int,
    sampling_ratio: int,
    aligned: bool = True,
) -> jax.Array:
    """Multi-level ROIAlign, pure JAX (torchvision `roi_align` semantics per level).

    Works under `jit` and `vmap`, for any R (including 0), and differentiates with respect to
    `features` (custom VJP; `boxes` get a zero cotangent).

    Args:
      features: per level `f32|bf16[B, H_l, W_l, C]` NHWC feature maps (same B and C).
      boxes: `f32[R, 4]` xyxy in input-image px.
      batch_idx: `i32[R]` image of each box (clipped to `[0, B)`).
      level_idx: `i32[R]` index into `features` of each box (clipped to `[0, L)`).
      spatial_scales: per level `1 / stride`.
      output_size: S.
      sampling_ratio: samples per bin side; 0 = adaptive `ceil(roi_size / S)` per ROI.
      aligned: ROIAlignV2 half-pixel shift (Detectron2 `ROIAlignV2`).

    Returns:
      `f32[R, S, S, C]`; bf16 features are read as bf16 and accumulated in f32.

    Example: a 2x2 one-channel map `[[0, 1], [2, 3]]` (scale 1), box `[0, 0, 2, 2]`, S=1,
    sampling_ratio=1, aligned: one sample at (0.5, 0.5) -> 1.5.
    """
    table, fparams, iparams = _table_and_params(
        features, boxes, batch_idx, level_idx, spatial_scales, output_size, sampling_ratio, aligned
    )
    return _pool(table, fparams, iparams, output_size, table.shape[0])


# --------------------------------------------------------------------------------------------
# Pallas kernels (Triton backend).


KERNEL_VERSION = 1
"""Bump on any change to the Pallas kernels or their launch settings: `jax_rcnn.kernels` keys
its cached GPU self-check verdicts on it (with the device kind and the JAX version)."""


class _Launch(NamedTuple):
    """Static launch settings of one kernel: channels per program and Triton knobs."""

    channel_block: int
    num_warps: int
    num_stages: int


# Untuned first guesses (no GPU run yet): the forward keeps a (lanes, channel_block) f32
# accumulator per program, so the 256-lane 14x14 variant takes fewer channels and more warps.
FORWARD_LAUNCH = {64: _Launch(64, 4, 2), 256: _Launch(32, 8, 2)}


def _forward_launch(num_lanes: int) -> _Launch:
    """`FORWARD_LAUNCH`, extended to other output sizes by keeping lanes * block <= 8192."""
    default = _Launch(max(8, min(64, 8192 // num_lanes)), 4 if num_lanes <= 64 else 8, 2)
    return FORWARD_LAUNCH.get(num_lanes, default)


BACKWARD_LAUNCH = _Launch(64, 2, 1)
_UNROLL_SAMPLES = 16  # fixed sampling grids up to 4x4 are unrolled in the forward kernel


def _num_lanes(output_size: int) -> int:
    """Bins per ROI padded to a power of two (Triton tensor sizes must be powers of two)."""
    return 1 << (output_size * output_size - 1).bit_length()


def _channel_layout(num_channels: int, channel_block: int) -> tuple[int, int]:
    """`(block, padded C)`: a power-of-two channel block and C rounded up to a multiple."""
    block = min(channel_block, 1 << max(num_channels - 1, 0).bit_length())
    return block, -(-num_channels // block) * block


def _sample_position(scalars, ph, pw, iy, ix):
    """Sample `(iy, ix)` of bin `(ph, pw)` in feature px, `_sample_step`'s association."""
    start_x, start_y, bin_w, bin_h, grid_h, grid_w = scalars
    grid_h = jnp.maximum(grid_h, 1).astype(jnp.float32)
    grid_w = jnp.maximum(grid_w, 1).astype(jnp.float32)
    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
    x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
    return y, x


def _forward_kernel(fp_ref, ip_ref, table_ref, out_ref, *, output_size, sampling_ratio):
    """One program: all bins (lanes) of ROI `n` for one channel block.

    Refs: `fp f32[R, 4]`, `ip i32[R, 5]`, `table [T, Cp]` (whole arrays), `out f32[1, P, CB]`.
    """
    n, cblock = pl.program_id(0), pl.program_id(1)
    num_lanes, block = out_ref.shape[1], out_ref.shape[2]
    start_x, start_y, bin_w, bin_h = (fp_ref[n, k] for k in range(4))
    row_base, height, width, grid_h, grid_w = (ip_ref[n, k] for k in range(5))
    scalars = (start_x, start_y, bin_w, bin_h, grid_h, grid_w)
    lane = jnp.arange(num_lanes, dtype=jnp.int32)
    # Lanes past S*S pool finite junk (inside the image) that the wrapper slices off.
    ph = lax.div(lane, output_size).astype(jnp.float32)
    pw = lax.rem(lane, output_size).astype(jnp.float32)
    channels = cblock * block + jnp.arange(block, dtype=jnp.int32)

    def add_sample(iy, ix, acc):
        y, x = _sample_position(scalars, ph, pw, iy, ix)
        offsets, weights = _bilinear_corners(y, x, height, width)
        contrib = [
            w[:, None] * table_ref[(row_base + o)[:, None], channels[None, :]].astype(jnp.float32)
            for o, w in zip(offsets, weights, strict=True)
        ]
        return acc + (((contrib[0] + contrib[1]) + contrib[2]) + contrib[3])

    acc = jnp.zeros((num_lanes, block), jnp.float32)
    num_samples = grid_h * grid_w
    if 0 < sampling_ratio * sampling_ratio <= _UNROLL_SAMPLES:
        for iy in range(sampling_ratio):
            for ix in range(sampling_ratio):
                acc = add_sample(float(iy), float(ix), acc)
        # Only non-finite boxes have a zero grid here; they pool to zeros.
        acc = acc * (num_samples > 0).astype(jnp.float32)
    else:

        def body(t, acc):
            iy = lax.div(t, jnp.maximum(grid_w, 1))
            ix = t - iy * grid_w
            return add_sample(iy.astype(jnp.float32), ix.astype(jnp.float32), acc)

        acc = lax.fori_loop(0, num_samples, body, acc)
    out_ref[0, :, :] = acc / jnp.maximum(num_samples, 1).astype(jnp.float32)


def _backward_kernel(fp_ref, ip_ref, g_ref, zeros_ref, dtable_ref, *, output_size, block):
    """One program: scatters ROI `n`'s output cotangent for one channel block into `dtable`.

    Every `atomic_add` writes one table row times a contiguous channel block, so addresses in
    a call are distinct: correct on GPU and in interpret mode, where vector atomics with
    duplicate addresses lose updates (jax-ml/jax#24117). Corners that the border rule collapses
    onto one row are four separate calls.

    Refs: `fp f32[R, 4]`, `ip i32[R, 5]`, `g f32[R, S*S, Cp]` (whole arrays), `zeros` aliased to
    `dtable f32[T, Cp]`.
    """
    del zeros_ref
    n, cblock = pl.program_id(0), pl.program_id(1)
    start_x, start_y, bin_w, bin_h = (fp_ref[n, k] for k in range(4))
    row_base, height, width, grid_h, grid_w = (ip_ref[n, k] for k in range(5))
    scalars = (start_x, start_y, bin_w, bin_h, grid_h, grid_w)
    channels = pl.ds(pl.multiple_of(cblock * block, block), block)
    count = jnp.maximum(grid_h * grid_w, 1).astype(jnp.float32)

    def bin_body(p, carry):
        g = g_ref[n, p, channels] / count
        ph = lax.div(p, output_size).astype(jnp.float32)
        pw = lax.rem(p, output_size).astype(jnp.float32)

        def sample_body(t, carry):
            iy = lax.div(t, jnp.maximum(grid_w, 1))
            ix = t - iy * grid_w
            y, x = _sample_position(scalars, ph, pw, iy.astype(jnp.float32), ix.astype(jnp.float32))
            offsets, weights = _bilinear_corners(y, x, height, width)
            for o, w in zip(offsets, weights, strict=True):
                pltriton.atomic_add(dtable_ref, (row_base + o, channels), w * g)
            return carry

        return lax.fori_loop(0, grid_h * grid_w, sample_body, carry)

    lax.fori_loop(0, output_size * output_size, bin_body, 0)


def _pallas_forward(table, fparams, iparams, output_size, sampling_ratio, interpret):
    """`f32[R, P, Cp]` padded forward; `table [T, Cp]` with Cp a multiple of the block."""
    r, cp = fparams.shape[0], table.shape[1]
    lanes = _num_lanes(output_size)
    launch = _forward_launch(lanes)
    block, _ = _channel_layout(cp, launch.channel_block)
    kernel = functools.partial(
        _forward_kernel, output_size=output_size, sampling_ratio=sampling_ratio
    )
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((r, lanes, cp), jnp.float32),
        grid=(r, cp // block),
        in_specs=[pl.no_block_spec, pl.no_block_spec, pl.no_block_spec],
        out_specs=pl.BlockSpec((1, lanes, block), lambda n, c: (n, 0, c)),
        compiler_params=pltriton.CompilerParams(
            num_warps=launch.num_warps, num_stages=launch.num_stages
        ),
        interpret=interpret,
        name=f"roi_align_fwd_{output_size}x{output_size}",
    )(fparams, iparams, table)


def _pallas_backward(g, fparams, iparams, num_rows, output_size, interpret):
    """`f32[T, Cp]` table cotangent of `g f32[R, S*S, Cp]`."""
    r, cp = fparams.shape[0], g.shape[2]
    block, _ = _channel_layout(cp, BACKWARD_LAUNCH.channel_block)
    kernel = functools.partial(_backward_kernel, output_size=output_size, block=block)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((num_rows, cp), jnp.float32),
        grid=(r, cp // block),
        in_specs=[pl.no_block_spec] * 4,
        out_specs=pl.no_block_spec,
        # Triton outputs start uninitialised: accumulate into an aliased zeros input.
        input_output_aliases={3: 0},
        compiler_params=pltriton.CompilerParams(
            num_warps=BACKWARD_LAUNCH.num_warps, num_stages=BACKWARD_LAUNCH.num_stages
        ),
        interpret=interpret,
        name=f"roi_align_bwd_{output_size}x{output_size}",
    )(fparams, iparams, g, jnp.zeros((num_rows, cp), jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _pool_pallas(table, fparams, iparams, output_size, sampling_ratio, interpret):
    """`f32[R, S*S, Cp]` Pallas ROIAlign of `table [T, Cp]`."""
    out = _pallas_forward(table, fparams, iparams, output_size, sampling_ratio, interpret)
    return out[:, : output_size * output_size]


def _pool_pallas_fwd(table, fparams, iparams, output_size, sampling_ratio, interpret):
    out = _pool_pallas(table, fparams, iparams, output_size, sampling_ratio, interpret)
    return out, (table[:0], table.shape[0], fparams, iparams)


def _pool_pallas_bwd(output_size, sampling_ratio, interpret, residuals, g):
    del sampling_ratio  # the grid is in iparams
    table_like, num_rows, fparams, iparams = residuals
    dtable = _pallas_backward(
        g.astype(jnp.float32), fparams, iparams, num_rows, output_size, interpret
    )
    # f32 atomics accumulate; the cast to bf16 happens once, at the end.
    return dtable.astype(table_like.dtype), jnp.zeros_like(fparams), None


_pool_pallas.defvjp(_pool_pallas_fwd, _pool_pallas_bwd)


def roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    batch_idx: jax.Array,
    level_idx: jax.Array,
    *,
    spatial_scales: tuple[float, ...],
    output_size: int,
    sampling_ratio: int,
    aligned: bool = True,
    interpret: bool | None = None,
) -> jax.Array:
    """Multi-level ROIAlign as Pallas (Triton) kernels; same contract as `roi_align_reference`.

    Forward: grid `(R, Cp / CB)`, one program pools all `S*S` bins of one ROI (lanes padded to
    64 for 7x7, 256 for 14x14) for a block of CB channels, gathering four `(P, CB)` row tiles
    of the flat table per sample and accumulating in f32. The adaptive sampling grid is a
    dynamic loop per ROI, so no `MAX_GRID`-sized work is paid for small boxes. Backward (custom
    VJP): the same grid scatters with f32 atomics (order-nondeterministic on GPU to within
    float rounding); boxes get a zero cotangent.

    Args:
      features: per level `f32|bf16[B, H_l, W_l, C]` NHWC feature maps (same B and C).
      boxes: `f32[R, 4]` xyxy in input-image px.
      batch_idx: `i32[R]` image of each box (clipped to `[0, B)`).
      level_idx: `i32[R]` index into `features` of each box (clipped to `[0, L)`).
      spatial_scales: per level `1 / stride`.
      output_size: S.
      sampling_ratio: samples per bin side; 0 = adaptive `ceil(roi_size / S)` per ROI.
      aligned: ROIAlignV2 half-pixel shift (Detectron2 `ROIAlignV2`).
      interpret: run the kernels in the Pallas interpreter; None = unless the default backend
        is a GPU.

    Returns:
      `f32[R, S, S, C]`.
    """
    require_triton(pltriton)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    table, fparams, iparams = _table_and_params(
        features, boxes, batch_idx, level_idx, spatial_scales, output_size, sampling_ratio, aligned
    )
    r, num_channels, s = boxes.shape[0], table.shape[1], output_size
    if r == 0 or num_channels == 0:
        return jnp.zeros((r, s, s, num_channels), jnp.float32)
    # Parameters that overflow float32 (|coordinates| ~ 1e38) would turn into NaN positions
    # inside the kernel, where an out-of-range row is a wild read: pool them to zeros instead.
    finite = jnp.all(jnp.isfinite(fparams), axis=1)
    fparams = jnp.where(finite[:, None], fparams, 0.0)
    iparams = iparams.at[:, 3:].multiply(finite[:, None].astype(jnp.int32))
    block = max(_forward_launch(_num_lanes(s)).channel_block, BACKWARD_LAUNCH.channel_block)
    _, padded = _channel_layout(num_channels, block)
    if padded != num_channels:
        table = jnp.pad(table, ((0, 0), (0, padded - num_channels)))
    out = _pool_pallas(table, fparams, iparams, s, sampling_ratio, bool(interpret))
    return out[:, :, :num_channels].reshape(r, s, s, num_channels)
