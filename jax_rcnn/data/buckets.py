"""Padding buckets chosen for speed: few programs, few padded pixels.

A static-shape train step compiles once per padded image shape. Detectron2 pads each batch to
a multiple of 32 of its largest image (`ImageList.from_tensors`), which for multi-scale
training means one program per new batch shape (tens of compiles in a short run). jax_rcnn
instead pads every training image into one of at most `config.input.max_buckets` shapes
(`config.input.auto_buckets`), chosen here at start-up:

1. The resized shapes an image can take: every short edge of the policy
   (`input.min_size_train`, "choice": each size, "range": every integer) applied to every
   distinct training image size (`ResizeShortestEdge`, rounding included), weighted by how
   often they occur. Without image sizes (no dataset yet): every aspect ratio from 1:1 to
   3:1 in both orientations, plus the largest landscape and portrait shapes, so that any
   image fits.
2. Each shape rounded up to a multiple of `input.size_divisibility` (the smallest padding a
   shape can have: Detectron2's, for a batch of one).
3. Buckets: a set of at most `max_buckets` (H, W) that holds every shape and minimises the
   expected padded area (each image goes to the smallest bucket holding it, `pick_bucket`):
   greedy additions from the one bucket holding everything, then swaps until no single
   replacement helps. Candidates are the (H, W) combinations of the shapes' sides, so the
   result is exact for one bucket and a local optimum otherwise.

The expected share of padded pixels (padding / padded area, over images drawn as the loader
draws them) is reported with the choice, and logged by the training loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from jax_rcnn.data import transforms as T

_POLICY_ASPECTS = np.exp(np.linspace(0.0, np.log(3.0), 25))  # 1:1 .. 3:1, no dataset known


class BucketChoice(NamedTuple):
    """The chosen buckets and what they cost."""

    buckets: tuple[tuple[int, int], ...]  # (H, W), each a multiple of size_divisibility
    padded_share: float  # expected padded pixels / padded pixels, in [0, 1)
    exact_share: float  # the same with per-image multiple-of-d padding (the lower bound)
    num_shapes: int  # distinct resized shapes considered


def _short_edges(min_sizes: Sequence[int], sampling: str) -> list[int]:
    sizes = [int(s) for s in min_sizes]
    if sampling == "choice":
        return sizes
    if sampling == "range":
        return list(range(sizes[0], sizes[1] + 1))
    raise ValueError(f"min_size_train_sampling must be 'choice' or 'range', got {sampling!r}")


def resized_shape_weights(
    min_sizes: Sequence[int],
    sampling: str,
    max_size: int,
    image_sizes: Iterable[tuple[int, int]] | None = None,
) -> dict[tuple[int, int], float]:
    """{(h, w) after the training resize: probability} of a training image.

    Args:
      min_sizes: `input.min_size_train`.
      sampling: `input.min_size_train_sampling`.
      max_size: `input.max_size_train`.
      image_sizes: (height, width) of every training image (repeats count); None: the policy's
        shapes for aspect ratios 1:1 to 3:1, both orientations, plus the largest landscape and
        portrait shapes (tiny weight), so every image fits the result's buckets.

    Returns:
      Probabilities summing to 1.
    """
    shorts = _short_edges(min_sizes, sampling)
    weights: Counter = Counter()
    if image_sizes is None:
        for s in shorts:
            for a in _POLICY_ASPECTS:
                for hw in ((s, s * a), (s * a, s)):
                    h, w = T.resize_shortest_edge_shape(hw[0], hw[1], s, max_size)
                    weights[(h, w)] += 1.0
        total = sum(weights.values())
        short, longest = min(max(shorts), max_size), max_size
        for bound in ((short, longest), (longest, short)):
            weights[bound] += 1e-6 * total
    else:
        for (h, w), n in Counter((int(h), int(w)) for h, w in image_sizes).items():
            for s in shorts:
                weights[T.resize_shortest_edge_shape(h, w, s, max_size)] += n
    if not weights:
        raise ValueError("no training image sizes to choose buckets from")
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def choose_buckets(
    shape_weights: dict[tuple[int, int], float], size_divisibility: int, max_buckets: int
) -> BucketChoice:
    """At most `max_buckets` padded shapes holding every shape, with the least padded area.

    Args:
      shape_weights: {(h, w): weight} of resized images (`resized_shape_weights`).
      size_divisibility: every bucket side is a multiple of it.
      max_buckets: the compile budget (>= 1).

    Returns:
      The buckets (sorted, all used) and their expected padded-pixel share.
    """
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    d = max(int(size_divisibility), 1)
    padded: dict[tuple[int, int], list[float]] = {}
    for (h, w), wt in shape_weights.items():
        key = (-(-h // d) * d, -(-w // d) * d)
        acc = padded.setdefault(key, [0.0, 0.0])
        acc[0] += wt
        acc[1] += wt * h * w
    points = np.array(list(padded), np.int64)  # [P, 2]
    weight = np.array([v[0] for v in padded.values()])
    pixels = np.array([v[1] for v in padded.values()])  # weighted real pixels
    hs, ws = np.unique(points[:, 0]), np.unique(points[:, 1])
    cands = np.array([(h, w) for h in hs for w in ws], np.int64)  # [C, 2]
    area = (cands[:, 0] * cands[:, 1]).astype(np.float64)
    holds = (cands[:, None, 0] >= points[None, :, 0]) & (cands[:, None, 1] >= points[None, :, 1])
    cost_cp = np.where(holds, area[:, None] * weight[None, :], np.inf)  # [C, P]

    def total(chosen: list[int]) -> float:
        return float(np.min(cost_cp[chosen], axis=0).sum())

    def bound(mask: np.ndarray) -> int:
        h, w = points[mask, 0].max(), points[mask, 1].max()
        return int(np.flatnonzero((cands[:, 0] == h) & (cands[:, 1] == w))[0])

    def search(chosen: list[int]) -> list[int]:
        while len(chosen) < max_buckets:  # greedy additions
            cur = np.min(cost_cp[chosen], axis=0)
            gains = (cur[None, :] - np.minimum(cur[None, :], cost_cp)).sum(axis=1)
            best = int(np.argmax(gains))
            if gains[best] <= 0:
                break
            chosen.append(best)
        improved = True
        while improved:  # single swaps
            improved = False
            for i in range(len(chosen)):
                others = [c for j, c in enumerate(chosen) if j != i]
                rest = np.min(cost_cp[others], axis=0) if others else np.full(len(points), np.inf)
                costs = np.minimum(rest[None, :], cost_cp).sum(axis=1)
                best = int(np.argmin(costs))
                if costs[best] < total(chosen) * (1 - 1e-12):
                    chosen[i] = best
                    improved = True
        return chosen

    # Starts: the one bucket holding everything; the landscape and portrait bounds (a swap
    # cannot split one bucket into two, so this start is needed to find that split).
    starts = [[bound(np.ones(len(points), bool))]]
    portrait = points[:, 0] > points[:, 1]
    if max_buckets >= 2 and portrait.any() and not portrait.all():
        starts.append([bound(~portrait), bound(portrait)])
    chosen = min((search(s) for s in starts), key=total)
    assign = np.argmin(cost_cp[chosen], axis=0)
    used = sorted({chosen[k] for k in assign})
    buckets = tuple((int(cands[c, 0]), int(cands[c, 1])) for c in used)
    padded_area = float(np.min(cost_cp[used], axis=0).sum())
    exact_area = float((weight * points[:, 0] * points[:, 1]).sum())
    real = float(pixels.sum())
    return BucketChoice(buckets, 1 - real / padded_area, 1 - real / exact_area, len(points))


def train_buckets(config, image_sizes: Iterable[tuple[int, int]] | None = None) -> BucketChoice:
    """`choose_buckets` for the training resize policy of `config.input`.

    Args:
      config: reads `input.min_size_train`, `min_size_train_sampling`, `max_size_train`,
        `size_divisibility` and `max_buckets`.
      image_sizes: (height, width) of the training images, when known.
    """
    i = config.input
    weights = resized_shape_weights(
        i.min_size_train, i.min_size_train_sampling, i.max_size_train, image_sizes
    )
    return choose_buckets(weights, int(i.size_divisibility), int(i.max_buckets))


def eval_buckets(config, image_sizes: Iterable[tuple[int, int]]) -> BucketChoice:
    """`choose_buckets` for the test resize (`input.min_size_test`, `max_size_test`) of the
    evaluated images, within `input.max_buckets`."""
    i = config.input
    weights = resized_shape_weights((i.min_size_test,), "choice", i.max_size_test, image_sizes)
    return choose_buckets(weights, int(i.size_divisibility), int(i.max_buckets))
