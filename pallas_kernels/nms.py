"""Batched greedy non-maximum suppression: the pure-JAX reference (`nms_reference`).

**Parity:** reproduces torchvision `nms` (`csrc/ops/cpu/nms_kernel.cpp`), which Detectron2 calls
through `layers/nms.py:batched_nms`: boxes are visited by descending score; a kept box
suppresses every later box whose IoU with it is strictly greater than the threshold;
`IoU = inter / (area_a + area_b - inter)` with no +1 and the same float32 operation order as
torchvision; the threshold is compared as torchvision compares it (a float32 IoU against the
double threshold). One group here is one call of torchvision `nms`; Detectron2's
`batched_nms(boxes, scores, idxs)` is this with one group per idx value followed by a merge of
the kept boxes by score (its coordinate-offset trick can only differ on IoUs within float
rounding of the threshold). Deliberate deviations, only where torchvision is undefined or
unordered: a box with a non-finite coordinate or a NaN score is invalid (never kept, never
suppresses); equal scores are visited in ascending index order (torchvision's sort is not
stable); at most `max_output` boxes are kept per group (the first ones torchvision would keep).

Algorithm: one `while_loop` step per kept box, per group in parallel. Each step takes the
first still-alive box in score order (it is the next box greedy NMS keeps), computes its IoU
row against the group and kills the boxes it suppresses. Steps = largest number kept in a
group (<= `max_output`), work per step `O(G * N)`, memory `O(G * N)`: no `N x N` matrix.
"""

from __future__ import annotations

import functools

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


def _f32_threshold(iou_threshold: float) -> np.float32:
    """The float32 `t` with `iou > t` (in f32) iff `iou > iou_threshold` (in double).

    torchvision promotes the float32 IoU to double for the comparison. When rounding the
    threshold to float32 rounds it up, the float32 just below it gives the same decisions.
    """
    t = np.float32(iou_threshold)
    if float(t) > iou_threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return t


def _iou_row(box: jax.Array, area: jax.Array, boxes: jax.Array, areas: jax.Array) -> jax.Array:
    """IoU of one box per group against all boxes of its group, torchvision's arithmetic.

    Args:
      box: `f32[G, 4]` xyxy.
      area: `f32[G]` its area.
      boxes: `f32[G, N, 4]` xyxy.
      areas: `f32[G, N]`.

    Returns:
      `f32[G, N]`; `0 / 0` (two zero-area boxes) is NaN and so never suppresses.
    """
    xx1 = jnp.maximum(box[:, None, 0], boxes[..., 0])
    yy1 = jnp.maximum(box[:, None, 1], boxes[..., 1])
    xx2 = jnp.minimum(box[:, None, 2], boxes[..., 2])
    yy2 = jnp.minimum(box[:, None, 3], boxes[..., 3])
    inter = jnp.maximum(xx2 - xx1, 0.0) * jnp.maximum(yy2 - yy1, 0.0)
    return inter / (area[:, None] + areas - inter)


def _sorted_candidates(
    boxes: jax.Array, scores: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The candidates of every group in greedy-NMS visiting order (shared by both paths).

    A box with a non-finite coordinate or a NaN score is invalid; invalid boxes become the
    canonical `[0, 0, 0, 0]`. Each group is sorted valid first, then by descending score, then
    by ascending index (a stable order for equal scores).

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]`.

    Returns:
      `(sorted_boxes f32[G, N, 4], valid bool[G, N] (unsorted, sanitised), order i32[G, N])`.
    """
    num_groups, n = scores.shape
    boxes = boxes.astype(jnp.float32)
    scores = scores.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(boxes), axis=-1)
    valid = valid & finite & ~jnp.isnan(scores)
    boxes = jnp.where(finite[..., None], boxes, 0.0)
    index = lax.broadcasted_iota(jnp.int32, (num_groups, n), 1)
    invalid_key = (~valid).astype(jnp.int32)
    score_key = jnp.where(valid, -scores, 0.0)
    _, _, order = lax.sort((invalid_key, score_key, index), dimension=1, num_keys=3)
    return jnp.take_along_axis(boxes, order[..., None], axis=1), valid, order


def nms_reference(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS over independent groups (torchvision `nms` semantics per group).

    Works under `jit` and `vmap`; static output shape.

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]` candidates taking part; others are never kept nor suppress. Boxes
        with a non-finite coordinate and NaN scores are treated as invalid.
      iou_threshold: a box is suppressed when its IoU with a kept box is > this (strict).
      max_output: K, number of kept slots per group.

    Returns:
      `(keep i32[G, K], keep_valid bool[G, K])`: indices into N of the kept boxes in
      descending score order; slots past the number kept hold index 0 and
      `keep_valid=False`.

    Example: boxes `[[0, 0, 2, 2], [0, 0, 2, 1], [5, 5, 6, 6]]`, scores `[.9, .8, .7]`,
    threshold 0.5, K=4: IoU(0, 1) = 0.5 is not > 0.5, so `keep = [0, 1, 2, 0]`,
    `keep_valid = [T, T, T, F]`.
    """
    num_groups, n = scores.shape
    k = max_output
    boxes, valid, order = _sorted_candidates(boxes, scores, valid)
    alive = jnp.take_along_axis(valid, order, axis=1)
    index = lax.broadcasted_iota(jnp.int32, (num_groups, n), 1)
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    threshold = _f32_threshold(iou_threshold)
    groups = jnp.arange(num_groups)

    def cond(state):
        alive, _, count = state
        return jnp.any(jnp.any(alive, axis=1) & (count < k))

    def body(state):
        alive, keep, count = state
        # The first alive box is the next one greedy NMS keeps: every earlier box was either
        # kept or suppressed already.
        first = jnp.argmax(alive, axis=1)
        take = jnp.any(alive, axis=1) & (count < k)
        iou = _iou_row(boxes[groups, first], areas[groups, first], boxes, areas)
        suppressed = (iou > threshold) | (index == first[:, None])
        alive = alive & ~(take[:, None] & suppressed)
        slot = jnp.minimum(count, k - 1)
        keep = keep.at[groups, slot].set(jnp.where(take, order[groups, first], keep[groups, slot]))
        return alive, keep, count + take.astype(jnp.int32)

    init = (alive, jnp.zeros((num_groups, k), jnp.int32), jnp.zeros((num_groups,), jnp.int32))
    if k == 0:
        return init[1], jnp.zeros((num_groups, 0), bool)
    _, keep, count = lax.while_loop(cond, body, init)
    keep_valid = jnp.arange(k)[None, :] < count[:, None]
    return keep, keep_valid


# --------------------------------------------------------------------------------------------
# Pallas kernels (Triton backend).

KERNEL_VERSION = 1
"""Bump on any change to the Pallas kernels or their launch settings: `jax_rcnn.kernels` keys
its cached GPU self-check verdicts on it (with the device kind and the JAX version)."""

_WORD = 32  # bits per suppression-mask word
MASK_BLOCK_ROWS = 64
MASK_NUM_WARPS = 4
SCAN_NUM_WARPS = 1


def _f32_op(op: str, a: jax.Array, b: jax.Array, ieee: bool) -> jax.Array:
    """`a op b` in float32, correctly rounded and never fused when `ieee`.

    Triton divides with the approximate `div.full.f32` and lets LLVM contract a product into a
    following add (FMA); either can flip an IoU that sits on the threshold (the torchvision
    fixtures have exact ties). PTX `.rn` instructions in inline asm are IEEE and opaque to
    contraction. Interpret mode (no inline asm there) is IEEE already.
    """
    if not ieee:
        return {"mul": lax.mul, "div": lax.div}[op](a, b)
    a, b = jnp.broadcast_arrays(a, b)
    (out,) = pltriton.elementwise_inline_asm(
        f"{op}.rn.f32 $0, $1, $2;",
        args=[a, b],
        constraints="=r,r,r",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(a.shape, jnp.float32)],
    )
    return out


def _mask_kernel(nvalid_ref, rows_ref, cols_ref, mask_ref, *, threshold, ieee):
    """IoU > threshold bitmask of one block of rows against the later boxes of its group.

    `mask[g, i, w]` bit `b` is set when sorted box `i` suppresses box `j = 32 w + b > i`. Only
    words from the diagonal up to `ceil(nvalid / 32)` of rows below `nvalid` are written; the
    scan never reads the rest.

    Refs: `nvalid i32[G]` (whole), `rows f32[1, 4, BR]`, `cols f32[1, 4, Np]` (x1, y1, x2, y2
    rows of the score-sorted group), `mask i32[1, BR, Np / 32]`.
    """
    g, row_block = pl.program_id(0), pl.program_id(1)
    block_rows = rows_ref.shape[2]
    n = nvalid_ref[g]
    r0 = row_block * block_rows

    @pl.when(r0 < n)
    def _():
        rx1, ry1, rx2, ry2 = (rows_ref[0, k, :][:, None] for k in range(4))
        row_area = _f32_op("mul", rx2 - rx1, ry2 - ry1, ieee)
        row_id = r0 + jnp.arange(block_rows, dtype=jnp.int32)[:, None]
        shifts = jnp.arange(_WORD, dtype=jnp.int32)[None, :]

        def word(w, carry):
            c0 = pl.multiple_of(w * _WORD, _WORD)
            cx1, cy1, cx2, cy2 = (cols_ref[0, k, pl.ds(c0, _WORD)][None, :] for k in range(4))
            # nms_reference's arithmetic: (area_i + area_j) - inter, then one division.
            iw = jnp.maximum(jnp.minimum(rx2, cx2) - jnp.maximum(rx1, cx1), 0.0)
            ih = jnp.maximum(jnp.minimum(ry2, cy2) - jnp.maximum(ry1, cy1), 0.0)
            inter = _f32_op("mul", iw, ih, ieee)
            union = (row_area + _f32_op("mul", cx2 - cx1, cy2 - cy1, ieee)) - inter
            iou = _f32_op("div", inter, union, ieee)
            suppress = (iou > threshold) & (c0 + shifts > row_id)
            # Distinct bits: their sum is their OR (Triton has no reduce_or).
            bits = jnp.where(suppress, jnp.left_shift(jnp.int32(1), shifts), 0)
            mask_ref[0, :, pl.ds(w, 1)] = jnp.sum(bits, axis=1, keepdims=True)
            return carry

        lax.fori_loop(lax.div(r0, _WORD), lax.div(n + _WORD - 1, _WORD), word, 0)


def _scan_kernel(nvalid_ref, mask_ref, keep_ref, *, max_output):
    """Greedy scan of one group's bitmask; stops after `max_output` kept boxes.

    The word of `removed` covering the current 32 boxes is a scalar carry updated from the
    diagonal mask word (a scalar load independent of the carry, so it pipelines); the full row
    is OR-ed into `removed` only for kept boxes.

    Refs: `nvalid i32[G]` (whole), `mask i32[1, Np, W]`, `keep i32[1, W]` kept-box bits.
    """
    g = pl.program_id(0)
    num_words = keep_ref.shape[1]
    n = nvalid_ref[g]
    word_id = jnp.arange(num_words, dtype=jnp.int32)

    def cond(carry):
        w, count, _, _ = carry
        return (w * _WORD < n) & (count < max_output)

    def body(carry):
        w, count, removed, kept = carry
        current = jnp.sum(jnp.where(word_id == w, removed, 0))

        def bit(b, carry):
            current, removed, kept_word, count = carry
            i = w * _WORD + b
            alive = (lax.shift_right_logical(current, b) & 1) == 0
            take = alive & (i < n) & (count < max_output)
            current = jnp.where(take, current | mask_ref[0, i, w], current)
            removed = jnp.where(take, removed | mask_ref[0, i, :], removed)
            kept_word = jnp.where(take, kept_word | lax.shift_left(jnp.int32(1), b), kept_word)
            return current, removed, kept_word, count + take.astype(jnp.int32)

        _, removed, kept_word, count = lax.fori_loop(
            0, _WORD, bit, (current, removed, jnp.int32(0), count)
        )
        kept = jnp.where(word_id == w, kept_word, kept)
        return w + 1, count, removed, kept

    zeros = jnp.zeros((num_words,), jnp.int32)
    _, _, _, kept = lax.while_loop(cond, body, (jnp.int32(0), jnp.int32(0), zeros, zeros))
    keep_ref[0, :] = kept


def _keep_words(boxes_t, nvalid, threshold, max_output, interpret):
    """Bitmask + scan kernels: `i32[G, Np / 32]` kept bits of sorted `boxes_t f32[G, 4, Np]`."""
    num_groups, _, padded = boxes_t.shape
    num_words = padded // _WORD
    block_rows = min(MASK_BLOCK_ROWS, padded)
    mask = pl.pallas_call(
        functools.partial(_mask_kernel, threshold=threshold, ieee=not interpret),
        out_shape=jax.ShapeDtypeStruct((num_groups, padded, num_words), jnp.int32),
        grid=(num_groups, padded // block_rows),
        in_specs=[
            pl.no_block_spec,
            pl.BlockSpec((1, 4, block_rows), lambda g, r: (g, 0, r)),
            pl.BlockSpec((1, 4, padded), lambda g, r: (g, 0, 0)),
        ],
        out_specs=pl.BlockSpec((1, block_rows, num_words), lambda g, r: (g, r, 0)),
        compiler_params=pltriton.CompilerParams(num_warps=MASK_NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="nms_iou_bitmask",
    )(nvalid, boxes_t, boxes_t)
    return pl.pallas_call(
        functools.partial(_scan_kernel, max_output=max_output),
        out_shape=jax.ShapeDtypeStruct((num_groups, num_words), jnp.int32),
        grid=(num_groups,),
        in_specs=[pl.no_block_spec, pl.BlockSpec((1, padded, num_words), lambda g: (g, 0, 0))],
        out_specs=pl.BlockSpec((1, num_words), lambda g: (g, 0)),
        compiler_params=pltriton.CompilerParams(num_warps=SCAN_NUM_WARPS, num_stages=3),
        interpret=interpret,
        name="nms_scan",
    )(nvalid, mask)


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS over groups as Pallas (Triton) kernels; same contract as `nms_reference`.

    In JAX: sanitise and sort each group exactly like `nms_reference` (valid first, descending
    score, ascending index; invalid boxes form a suffix, like -inf scores) and pad N to a
    power of two (at least 32). Kernel A, grid `(G, Np / 64)`: the upper-triangle IoU bitmask
    in 32-bit words, skipping rows and words past each group's valid count. Kernel B, one
    program per group: the greedy scan over the bitmask, stopping at K kept boxes. Back in
    JAX: the kept bits become the first K kept indices in score order.

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]` candidates taking part; others are never kept nor suppress.
      iou_threshold: a box is suppressed when its IoU with a kept box is > this (strict).
      max_output: K, number of kept slots per group.
      interpret: run the kernels in the Pallas interpreter; None = unless the default backend
        is a GPU.

    Returns:
      `(keep i32[G, K], keep_valid bool[G, K])` as `nms_reference`.
    """
    require_triton(pltriton)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    num_groups, n = scores.shape
    k = max_output
    if num_groups == 0 or n == 0 or k == 0:
        return jnp.zeros((num_groups, k), jnp.int32), jnp.zeros((num_groups, k), bool)
    boxes, valid, order = _sorted_candidates(boxes, scores, valid)
    nvalid = jnp.sum(valid, axis=1, dtype=jnp.int32)

    padded = max(_WORD, 1 << (n - 1).bit_length())
    boxes_t = jnp.pad(boxes.transpose(0, 2, 1), ((0, 0), (0, 0), (0, padded - n)))
    threshold = float(_f32_threshold(iou_threshold))
    words = _keep_words(boxes_t, nvalid, threshold, k, bool(interpret))

    kept = (words[:, :, None] >> jnp.arange(_WORD, dtype=jnp.int32)) & 1
    kept = kept.reshape(num_groups, padded)[:, :n].astype(bool)
    count = jnp.sum(kept, axis=1, dtype=jnp.int32)
    (position,) = jax.vmap(lambda row: jnp.nonzero(row, size=k, fill_value=0))(kept)
    keep_valid = jnp.arange(k)[None, :] < count[:, None]
    keep = jnp.where(keep_valid, jnp.take_along_axis(order, position, axis=1), 0)
    return keep, keep_valid
