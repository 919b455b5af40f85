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
