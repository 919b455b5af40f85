"""Random fg/bg subsampling of labelled anchors or proposals, with static shapes.

**Parity:** reproduces Detectron2 `modeling/sampling.py:subsample_labels`: positives are labels
other than -1 and `bg_label`, negatives equal `bg_label`; it samples
`num_pos = min(#pos, int(num_samples * positive_fraction))` positives and
`num_neg = min(#neg, num_samples - num_pos)` negatives, each a uniformly random subset.
Deviations: the result is a pair of boolean masks over the inputs instead of index lists
(same sets, static shapes), and the randomness comes from an explicit JAX key: every element
gets an i.i.d. uniform 32-bit key and a group keeps its `k` smallest keys (ties, which are
rare, go to the lower index), so the subsets differ from torch's `randperm` draws while having
the same distribution. The `k`-th smallest key is found by a 32-step bisection over the key
range (masked counts, no sort): sorting 2 x 268k anchor keys for a permutation and two `top_k`s
cost ~0.75 s of a full-size CPU train step, the bisection ~10 ms. `sampled_indices` lists the
sampled elements positives first, each group in index order (Detectron2 concatenates the
randomly ordered fg indices then bg indices; the order never reaches a loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _select_smallest(keys: jax.Array, mask: jax.Array, k: jax.Array) -> jax.Array:
    """`bool[N]`: the `min(k, mask.sum())` masked elements with the smallest `keys` (u32[N]).

    Bisection for the smallest threshold `t` with `#{mask & keys <= t} >= k`; everything below
    `t` is taken, and the elements equal to `t` fill the rest in index order.
    """
    k = k.astype(jnp.int32)

    def count_le(t):
        return jnp.sum(mask & (keys <= t), dtype=jnp.int32)

    def step(_, lo_hi):
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2
        enough = count_le(mid) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    u32 = jnp.uint32
    t, _ = jax.lax.fori_loop(0, 32, step, (u32(0), u32(0xFFFFFFFF)))
    below = mask & (keys < t)
    ties = mask & (keys == t)
    room = k - jnp.sum(below, dtype=jnp.int32)
    return below | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= room))


def subsample_labels(
    key: jax.Array,
    labels: jax.Array,
    num_samples: int,
    positive_fraction: float,
    *,
    bg_label: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Samples at most `num_samples` labelled elements, at most a fraction of them positive.

    Args:
      key: PRNG key, consumed.
      labels: `i32[N]`: -1 ignore, `bg_label` negative, anything else positive (1 for the RPN,
        a class index in [0, K) for the ROI heads with `bg_label=K`).
      num_samples: static total to sample (256 for the RPN, 512 for the ROI heads).
      positive_fraction: static cap on the positive share (0.5 RPN, 0.25 ROI heads).
      bg_label: the negative label.

    Returns:
      `(pos_mask bool[N], neg_mask bool[N])`, disjoint; `pos_mask.sum() == num_pos` and
      `neg_mask.sum() == num_neg` (see module docstring); ignored elements are never chosen.

    Example:
      labels = [1, 1, 1, 0, 0, -1], num_samples=4, positive_fraction=0.5: 2 of the 3
      positives and both negatives are chosen; with num_samples=8 all 3 positives (#pos < 4)
      and both negatives.
    """
    positive = (labels != -1) & (labels != bg_label)
    negative = labels == bg_label
    max_pos = int(num_samples * positive_fraction)
    num_pos = jnp.minimum(jnp.sum(positive), max_pos)
    num_neg = jnp.minimum(jnp.sum(negative), num_samples - num_pos)
    if labels.shape[0] == 0:
        return positive, negative
    # The fg and bg sets are disjoint, so one draw of i.i.d. keys gives both independent
    # uniform orders.
    keys = jax.random.bits(key, labels.shape, jnp.uint32)
    pos_mask = _select_smallest(keys, positive, num_pos)
    neg_mask = _select_smallest(keys, negative, num_neg)
    return pos_mask, neg_mask


def compact_indices(mask: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Positions of the first `size` True entries, in increasing order.

    Args:
      mask: `bool[N]`.
      size: static output length.

    Returns:
      `(idx i32[size], valid bool[size])`; slots past the number of True entries hold 0 and
      `valid=False`.

    Example:
      >>> compact_indices(jnp.array([False, True, False, True]), 3)
      (Array([1, 3, 0], dtype=int32), Array([ True,  True, False], dtype=bool))
    """
    (idx,) = jnp.nonzero(mask, size=size, fill_value=0)
    valid = jnp.arange(size) < jnp.sum(mask)
    return idx.astype(jnp.int32), valid


def sampled_indices(
    pos_mask: jax.Array, neg_mask: jax.Array, num_samples: int
) -> tuple[jax.Array, jax.Array]:
    """Gathers sampled elements into a fixed number of slots, positives first.

    Args:
      pos_mask: `bool[N]` sampled positives (from `subsample_labels`).
      neg_mask: `bool[N]` sampled negatives, disjoint from `pos_mask`.
      num_samples: static number of slots R (>= the number sampled, e.g. the same
        `num_samples` given to `subsample_labels`).

    Returns:
      `(idx i32[R], valid bool[R])`: positives in index order, then negatives in index order,
      then padding (index 0, `valid=False`).

    Example:
      >>> sampled_indices(jnp.array([0, 1, 0, 1, 0], bool), jnp.array([1, 0, 0, 0, 1], bool), 5)
      (Array([1, 3, 0, 4, 0], dtype=int32), Array([ True,  True,  True,  True, False], dtype=bool))
    """
    pos_idx, _ = compact_indices(pos_mask, num_samples)
    neg_idx, _ = compact_indices(neg_mask, num_samples)
    num_pos = jnp.minimum(jnp.sum(pos_mask), num_samples)
    num_neg = jnp.sum(neg_mask)
    slot = jnp.arange(num_samples)
    neg_slot = jnp.clip(slot - num_pos, 0, num_samples - 1)
    idx = jnp.where(slot < num_pos, pos_idx, neg_idx[neg_slot])
    valid = slot < num_pos + num_neg
    return idx.astype(jnp.int32), valid


def random_sampler(
    key: jax.Array,
    labels: jax.Array,
    quality: jax.Array,
    hardness: jax.Array,
    *,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
) -> tuple[jax.Array, jax.Array]:
    """Sampler "random" (the default): Detectron2's `subsample_labels` (see there).

    `quality` and `hardness` are not read. Signature: `jax_rcnn.research.Sampler`."""
    del quality, hardness
    return subsample_labels(key, labels, num_samples, positive_fraction, bg_label=bg_label)


def _counts(labels, num_samples, positive_fraction, bg_label):
    positive = (labels != -1) & (labels != bg_label)
    negative = labels == bg_label
    num_pos = jnp.minimum(jnp.sum(positive), int(num_samples * positive_fraction))
    num_neg = jnp.minimum(jnp.sum(negative), num_samples - num_pos)
    return positive, negative, num_pos, num_neg


def _descending_keys(values: jax.Array) -> jax.Array:
    """u32 keys whose ascending order is the descending order of `values` (>= 0; NaN as 0):
    the bits of a non-negative float32 sort like the float."""
    v = jnp.maximum(jnp.nan_to_num(values.astype(jnp.float32), nan=0.0), 0.0)
    return ~jax.lax.bitcast_convert_type(v, jnp.uint32)


def ohem_sampler(
    key: jax.Array,
    labels: jax.Array,
    quality: jax.Array,
    hardness: jax.Array,
    *,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
) -> tuple[jax.Array, jax.Array]:
    """Sampler "ohem": online hard example mining (Shrivastava et al. 2016), loss-ranked.

    The same counts as `subsample_labels`, but the `num_pos` positives and `num_neg` negatives
    with the largest `hardness` (the detached per-candidate loss the ROI-head stage computes
    for samplers with `uses_loss`) instead of random ones; ties go to the lower index.
    MMDetection's `OHEMSampler` ranks the same way (no NMS among the hard examples).

    Returns:
      `(pos_mask bool[N], neg_mask bool[N])`. Signature: `jax_rcnn.research.Sampler`.
    """
    del key, quality
    positive, negative, num_pos, num_neg = _counts(labels, num_samples, positive_fraction, bg_label)
    if labels.shape[0] == 0:
        return positive, negative
    keys = _descending_keys(hardness)
    return _select_smallest(keys, positive, num_pos), _select_smallest(keys, negative, num_neg)


ohem_sampler.uses_loss = True

# Libra R-CNN's IoU-balanced negative sampling: bins over [0, max negative IoU].
IOU_BALANCED_NUM_BINS = 3


def iou_balanced_sampler(
    key: jax.Array,
    labels: jax.Array,
    quality: jax.Array,
    hardness: jax.Array,
    *,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
) -> tuple[jax.Array, jax.Array]:
    """Sampler "iou_balanced": Libra R-CNN's IoU-balanced negative sampling (Pang et al. 2019).

    Positives and the counts `num_pos`, `num_neg` as `subsample_labels`. The negatives' IoU
    range `[0, max IoU of a negative]` is cut into `IOU_BALANCED_NUM_BINS` equal bins (the last
    one closed); each bin gets `num_neg // bins` uniformly random negatives (all of them when it
    has fewer), and the rest of `num_neg` is filled with uniformly random unchosen negatives.
    Hard negatives (IoU near the threshold) are rare, so random sampling almost never picks
    them; this gives them an equal share. (MMDetection's `IoUBalancedNegSampler` with
    `floor_thr=-1`, up to its bin edges; positives stay random here, not instance-balanced.)

    Args:
      key: PRNG key (one draw of i.i.d. u32 keys for all groups, as `subsample_labels`).
      labels: `i32[N]` -1 ignore, `bg_label` negative, else positive.
      quality: `f32[N]` each candidate's best IoU with a gt (0 when no gt).
      hardness: unused.
      num_samples, positive_fraction, bg_label: as `subsample_labels`.

    Returns:
      `(pos_mask bool[N], neg_mask bool[N])`. Signature: `jax_rcnn.research.Sampler`.
    """
    del hardness
    positive, negative, num_pos, num_neg = _counts(labels, num_samples, positive_fraction, bg_label)
    if labels.shape[0] == 0:
        return positive, negative
    keys = jax.random.bits(key, labels.shape, jnp.uint32)
    pos_mask = _select_smallest(keys, positive, num_pos)
    iou = jnp.where(negative, quality, 0.0)
    width = jnp.max(iou) / IOU_BALANCED_NUM_BINS
    per_bin = num_neg // IOU_BALANCED_NUM_BINS
    bin_idx = jnp.where(width > 0, jnp.floor(iou / jnp.maximum(width, 1e-12)), 0)
    bin_idx = jnp.clip(bin_idx, 0, IOU_BALANCED_NUM_BINS - 1).astype(jnp.int32)
    neg_mask = jnp.zeros_like(negative)
    for b in range(IOU_BALANCED_NUM_BINS):
        neg_mask = neg_mask | _select_smallest(keys, negative & (bin_idx == b), per_bin)
    extra = num_neg - jnp.sum(neg_mask, dtype=jnp.int32)
    neg_mask = neg_mask | _select_smallest(keys, negative & ~neg_mask, extra)
    return pos_mask, neg_mask
