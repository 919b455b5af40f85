"""Soft-NMS (Bodla et al. 2017) over groups: the pure-JAX reference and a Pallas kernel.

**Semantics** (Detectron v1's `utils/cython_nms.pyx:soft_nms`; Detectron2 has none, its issue
#980): per group, repeatedly pick the highest current score among the alive boxes (first index
on ties), then decay every box's score by `1 - IoU` where `IoU > iou_threshold` ("linear") or
by `exp(-IoU^2 / sigma)` ("gaussian"), and drop the picked box and every box whose decayed score
fell below `min_score`. A picked box reports its score at the time it was picked. Boxes with a
non-finite coordinate are `[0, 0, 0, 0]` (IoU 0 with everything); invalid slots, non-finite
scores and scores below `min_score` never take part. IoU is `jax_rcnn.boxes.pairwise_iou`'s
arithmetic: `inter / (area_i + area_j - inter)`, exactly 0 where `inter` is 0.

Both paths compute one IoU row per pick (no `N x N` matrix): the reference as a `fori_loop` per
group in XLA, the kernel as one program per group holding the group's boxes and scores in
registers for all `max_output` picks (one launch instead of several per pick).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._triton import require_triton

try:
    from jax.experimental.pallas import triton as pltriton
except ImportError:  # a JAX without Pallas-Triton (docs/kernels.md): the reference still works
    pltriton = None

KERNEL_VERSION = 1
"""Bump on any change to the kernel or its launch settings (keys the GPU self-check cache)."""

METHODS = ("linear", "gaussian")
NUM_WARPS = 4


def _prepare(boxes, scores, valid, min_score):
    """Sanitised boxes `f32[G, N, 4]`, starting scores `f32[G, N]` (0 where not alive) and
    `alive bool[G, N]`."""
    boxes = boxes.astype(jnp.float32)
    scores = scores.astype(jnp.float32)
    finite = jnp.all(jnp.isfinite(boxes), axis=-1)
    boxes = jnp.where(finite[..., None], boxes, 0.0)
    alive = valid.astype(bool) & jnp.isfinite(scores) & (scores >= min_score)
    return boxes, jnp.where(alive, scores, 0.0), alive


def _iou_row(x1, y1, x2, y2, area, bx1, by1, bx2, by2, barea):
    """IoU of one box (scalars `b*`) against all (`f32[...]`), `pairwise_iou`'s arithmetic."""
    w = jnp.maximum(jnp.minimum(bx2, x2) - jnp.maximum(bx1, x1), 0.0)
    h = jnp.maximum(jnp.minimum(by2, y2) - jnp.maximum(by1, y1), 0.0)
    inter = w * h
    union = jnp.where(inter > 0, barea + area - inter, 1.0)
    return jnp.where(inter > 0, inter / union, 0.0)


def _weight(iou, method, iou_threshold, sigma):
    if method == "linear":
        return jnp.where(iou > iou_threshold, 1.0 - iou, 1.0)
    return jnp.exp(-(iou * iou) / sigma)


def _check(method, max_output):
    if method not in METHODS:
        raise ValueError(f"soft_nms method must be one of {METHODS}, got {method!r}")
    if max_output < 0:
        raise ValueError(f"max_output must be >= 0, got {max_output}")


def soft_nms_reference(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    method: str,
    sigma: float,
    min_score: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Soft-NMS per group, pure JAX (see the module docstring).

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]`.
      iou_threshold: the linear method's overlap threshold Nt (Gaussian: unused).
      max_output: K picks per group (static).
      method: "linear" or "gaussian".
      sigma: the Gaussian's sigma.
      min_score: boxes whose (decayed) score is below this are dropped.

    Returns:
      `(keep i32[G, K], keep_scores f32[G, K], keep_valid bool[G, K])` in pick order; padding
      slots hold 0.
    """
    _check(method, max_output)
    num_groups, num = scores.shape
    boxes, cur, alive = _prepare(boxes, scores, valid, min_score)
    k = min(max_output, num)

    def one_group(b, cur, alive):
        x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        area = (x2 - x1) * (y2 - y1)

        def pick(i, carry):
            cur, alive, keep, keep_s, keep_v = carry
            j = jnp.argmax(jnp.where(alive, cur, -jnp.inf))
            ok = alive[j]
            ov = _iou_row(x1, y1, x2, y2, area, x1[j], y1[j], x2[j], y2[j], area[j])
            new = jnp.where(ok, cur * _weight(ov, method, iou_threshold, sigma), cur)
            alive = alive & (jnp.arange(num) != j) & (new >= min_score)
            keep = keep.at[i].set(jnp.where(ok, j, 0))
            keep_s = keep_s.at[i].set(jnp.where(ok, cur[j], 0.0))
            keep_v = keep_v.at[i].set(ok)
            return new, alive, keep, keep_s, keep_v

        init = (cur, alive, jnp.zeros((k,), jnp.int32), jnp.zeros((k,)), jnp.zeros((k,), bool))
        _, _, keep, keep_s, keep_v = lax.fori_loop(0, k, pick, init)
        return keep, keep_s, keep_v

    if num_groups == 0 or k == 0:
        keep, keep_s, keep_v = (
            jnp.zeros((num_groups, k), jnp.int32),
            jnp.zeros((num_groups, k)),
            jnp.zeros((num_groups, k), bool),
        )
    else:
        keep, keep_s, keep_v = jax.vmap(one_group)(boxes, cur, alive)
    pad = ((0, 0), (0, max_output - k))
    return jnp.pad(keep, pad), jnp.pad(keep_s, pad), jnp.pad(keep_v, pad)


# --------------------------------------------------------------------------------------------
# Pallas kernel (Triton backend).


def _kernel(
    data_ref, keep_ref, keep_s_ref, keep_v_ref, *, k, method, iou_threshold, sigma, min_score
):
    """All `k` picks of one group.

    Refs: `data f32[1, 8, Np]` rows x1, y1, x2, y2, starting score, alive (0/1), 0, 0 (padded
    slots not alive); outputs `keep i32[1, Kp]`, `keep_s f32[1, Kp]`, `keep_v i32[1, Kp]`
    (Kp >= k a power of two; every slot written).
    """
    x1, y1, x2, y2 = (data_ref[0, r, :] for r in range(4))
    cur = data_ref[0, 4, :]
    alive = data_ref[0, 5, :] > 0.5
    area = (x2 - x1) * (y2 - y1)
    num = x1.shape[0]
    slots = keep_ref.shape[1]
    index = jnp.arange(num, dtype=jnp.int32)
    slot = jnp.arange(slots, dtype=jnp.int32)

    def pick(i, carry):
        cur, alive, keep, keep_s, keep_v = carry
        masked = jnp.where(alive, cur, -jnp.inf)
        best = jnp.max(masked)
        j = jnp.min(jnp.where(masked == best, index, num))  # first index of the maximum
        at_j = index == j
        ok = jnp.sum(jnp.where(at_j & alive, 1, 0)) > 0

        def value(v):
            return jnp.sum(jnp.where(at_j, v, 0.0))

        ov = _iou_row(x1, y1, x2, y2, area, value(x1), value(y1), value(x2), value(y2), value(area))
        new = jnp.where(ok, cur * _weight(ov, method, iou_threshold, sigma), cur)
        alive = alive & jnp.logical_not(at_j) & (new >= min_score)
        here = slot == i
        # No scalar `where` with literal branches in the Triton lowering (PALLAS.md 4).
        ok_i = ok.astype(jnp.int32)
        keep = jnp.where(here, j * ok_i, keep)
        keep_s = jnp.where(here, value(cur) * ok.astype(jnp.float32), keep_s)
        keep_v = jnp.where(here, ok_i, keep_v)
        return new, alive, keep, keep_s, keep_v

    zeros_i = jnp.zeros((slots,), jnp.int32)
    init = (cur, alive, zeros_i, jnp.zeros((slots,), jnp.float32), zeros_i)
    _, _, keep, keep_s, keep_v = lax.fori_loop(0, k, pick, init)
    keep_ref[0, :] = keep
    keep_s_ref[0, :] = keep_s
    keep_v_ref[0, :] = keep_v


def soft_nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    method: str,
    sigma: float,
    min_score: float,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Soft-NMS as one Pallas (Triton) program per group; same contract as
    `soft_nms_reference`.

    In JAX: sanitise (as the reference), pack each group's x1, y1, x2, y2, starting score and
    alive flag as rows of an `f32[G, 8, Np]` block, N padded to a power of two (at least 32,
    padded slots not alive). The kernel runs the K picks of its group in registers: each pick
    a max, the first index holding it, masked sums for the picked box, one IoU row and the
    decay, as the reference does. K is padded to a power of two for the outputs.

    Args:
      boxes, scores, valid, iou_threshold, max_output, method, sigma, min_score: as
        `soft_nms_reference`.
      interpret: run the kernel in the Pallas interpreter; None = unless the default backend
        is a GPU.

    Returns:
      As `soft_nms_reference`.
    """
    _check(method, max_output)
    require_triton(pltriton)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    num_groups, num = scores.shape
    k = min(max_output, num)
    pad = ((0, 0), (0, max_output - k))
    if num_groups == 0 or k == 0:
        return (
            jnp.zeros((num_groups, max_output), jnp.int32),
            jnp.zeros((num_groups, max_output), jnp.float32),
            jnp.zeros((num_groups, max_output), bool),
        )
    boxes, cur, alive = _prepare(boxes, scores, valid, min_score)
    padded = max(32, 1 << (num - 1).bit_length())
    slots = max(32, 1 << (k - 1).bit_length())
    rows = [
        boxes[..., 0],
        boxes[..., 1],
        boxes[..., 2],
        boxes[..., 3],
        cur,
        alive.astype(jnp.float32),
        jnp.zeros_like(cur),
        jnp.zeros_like(cur),
    ]
    data = jnp.pad(jnp.stack(rows, axis=1), ((0, 0), (0, 0), (0, padded - num)))
    keep, keep_s, keep_v = pl.pallas_call(
        functools.partial(
            _kernel,
            k=k,
            method=method,
            iou_threshold=float(iou_threshold),
            sigma=float(sigma),
            min_score=float(min_score),
        ),
        out_shape=(
            jax.ShapeDtypeStruct((num_groups, slots), jnp.int32),
            jax.ShapeDtypeStruct((num_groups, slots), jnp.float32),
            jax.ShapeDtypeStruct((num_groups, slots), jnp.int32),
        ),
        grid=(num_groups,),
        in_specs=[pl.BlockSpec((1, 8, padded), lambda g: (g, 0, 0))],
        out_specs=[pl.BlockSpec((1, slots), lambda g: (g, 0))] * 3,
        compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="soft_nms",
    )(data)
    keep, keep_s, keep_v = keep[:, :k], keep_s[:, :k], keep_v[:, :k] > 0
    return jnp.pad(keep, pad), jnp.pad(keep_s, pad), jnp.pad(keep_v, pad)
