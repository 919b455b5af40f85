"""Training samplers: which record fills each position of the global training stream (host side).

Parity: Detectron2's `TrainingSampler` (every epoch a new seeded permutation of all records) and
`RepeatFactorTrainingSampler` (`DATALOADER.SAMPLER_TRAIN`, `detectron2/data/samplers/
distributed_sampler.py`): image `i` appears `floor(r_i)` times per epoch plus once more with
probability `frac(r_i)` (stochastic rounding, a new draw every epoch), with `r_i` the repeat
factor of its rarest category (`repeat_factors_from_category_frequency`, LVIS paper appendix
B.2); the epoch's indices are then shuffled. Epochs therefore differ in length.

Both are pure functions of (seed, epoch), so a stream position maps to the same record on every
host and after any restart: `order.record(position)` is random access, which the loader's plan
and its exact resume rely on. The random numbers are NumPy's, not torch's: the distribution is
Detectron2's, the particular draws are not (no test could ask for torch's generator here).

Deviation: Detectron2 counts category frequencies on records that still hold their crowd
annotations; the loader's training records have crowd instances removed before the sampler sees
them, so a category that occurs only in crowd regions of an image does not count for that image
(LVIS has no crowd annotations; COCO's crowd regions are all of common categories).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import grain
import numpy as np

logger = logging.getLogger(__name__)

SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")
_EPOCH_CACHE = 2  # epochs kept in memory by RepeatFactorOrder (the plan only looks back a little)


def repeat_factors_from_category_frequency(
    records: Sequence[dict], repeat_thresh: float, sqrt: bool = True
) -> np.ndarray:
    """Per-image repeat factors from category frequency (Detectron2's formula).

    `f(c)` = fraction of images with at least one instance of category `c`;
    `r(c) = max(1, sqrt(t / f(c)))` (or `t / f(c)` without `sqrt`); `r(I) = max_{c in I} r(c)`,
    1 for an image without instances.

    Example: 10 images, category 7 in one of them, `t = 0.4`: `f = 0.1`, `r = sqrt(4) = 2`, so
    that image is seen twice per epoch; a category in 5 images has `r = 1`.

    Args:
        records: training records (`annotations[*]["category_id"]`).
        repeat_thresh: `t`, `DATALOADER.REPEAT_THRESHOLD` (> 0).
        sqrt: `DATALOADER.REPEAT_SQRT`.

    Returns:
        f32[N] repeat factors >= 1 (float32, as Detectron2's tensor).
    """
    if not repeat_thresh > 0:
        raise ValueError(f"repeat_thresh must be > 0, got {repeat_thresh}")
    per_image = [{a["category_id"] for a in r["annotations"]} for r in records]
    counts = Counter(c for cats in per_image for c in cats)
    n = len(records)
    rep = {}
    for c, k in counts.items():
        ratio = repeat_thresh / (k / n)
        rep[c] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
    for c in sorted(rep):
        logger.debug("category %s: freq=%.4f, rep=%.2f", c, counts[c] / n, rep[c])
    return np.array([max((rep[c] for c in cats), default=1.0) for cats in per_image], np.float32)


class TrainingOrder:
    """`TrainingSampler`: position `p` is record `perm_e[p % N]` of epoch `e = p // N`.

    `perm_e` is grain's `shuffle(seed)` reseeded per repetition (the loader's historic stream).
    """

    def __init__(self, num_records: int, seed: int):
        self.num_records = num_records
        self._order = grain.MapDataset.range(num_records).shuffle(seed=seed).repeat(None)

    def record(self, position: int) -> tuple[int, int, int]:
        """(record index, epoch, copy) of stream position `position`; copy is always 0."""
        return int(self._order[position]), position // self.num_records, 0

    def epoch(self, position: int) -> int:
        """The epoch that stream position `position` belongs to."""
        return position // self.num_records


class RepeatFactorOrder:
    """`RepeatFactorTrainingSampler`: epochs of repeated, shuffled record indices.

    Epoch `e` draws `u ~ U[0, 1)^N` and a permutation from `default_rng([seed, e, 0x52465453])`;
    record `i` appears `floor(r_i) + (u_i < frac(r_i))` times, the list in index order is then
    permuted. `copy` numbers the appearances of a record within its epoch (0, 1, ...), so every
    appearance gets its own augmentation.
    """

    _SALT = 0x52465453  # "RFTS": keeps these draws apart from the examples' generators

    def __init__(self, repeat_factors: np.ndarray, seed: int):
        r = np.asarray(repeat_factors, np.float32)
        if r.ndim != 1 or not len(r) or not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError("repeat factors must be a non-empty f32[N] of finite values >= 0")
        self.num_records, self.seed = len(r), seed
        self._int = np.trunc(r)
        self._frac = r - self._int
        self._starts = [0]  # _starts[e] = first stream position of epoch e (extended lazily)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self._SALT])

    def _counts(self, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(self.num_records, dtype=np.float32)
        return (self._int + (u < self._frac)).astype(np.int64)

    def epoch_length(self, epoch: int) -> int:
        """Number of positions in epoch `epoch` (varies with the stochastic rounding)."""
        n = int(self._counts(self._rng(epoch)).sum())
        if n == 0:
            raise ValueError(f"epoch {epoch} of the repeat-factor sampler is empty")
        return n

    def epoch_indices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(i64[L] record indices, i64[L] copy numbers) of epoch `epoch`, in stream order."""
        if epoch not in self._cache:
            rng = self._rng(epoch)
            counts = self._counts(rng)
            indices = np.repeat(np.arange(self.num_records), counts)
            first = np.cumsum(counts) - counts  # position of each record's first copy
            copies = np.arange(len(indices)) - np.repeat(first, counts)
            perm = rng.permutation(len(indices))
            if len(self._cache) >= _EPOCH_CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[epoch] = (indices[perm], copies[perm])
        return self._cache[epoch]

    def epoch(self, position: int) -> int:
        """The epoch that stream position `position` belongs to."""
        if position < 0:
            raise IndexError(f"negative stream position {position}")
        while self._starts[-1] <= position:
            self._starts.append(self._starts[-1] + self.epoch_length(len(self._starts) - 1))
        return int(np.searchsorted(self._starts, position, side="right")) - 1

    def record(self, position: int) -> tuple[int, int, int]:
        """(record index, epoch, copy) of stream position `position`."""
        e = self.epoch(position)
        indices, copies = self.epoch_indices(e)
        j = position - self._starts[e]
        return int(indices[j]), e, int(copies[j])


def train_order(config, records: Sequence[dict], seed: int) -> TrainingOrder | RepeatFactorOrder:
    """The order of `config.dataloader.sampler_train` over `records`.

    Args:
        config: reads `dataloader.sampler_train`, `dataloader.repeat_threshold`,
            `dataloader.repeat_sqrt`.
        records: the training records (after `filter_for_training`).
        seed: the loader seed.
    """
    dl = config.dataloader
    name = dl.get("sampler_train", "TrainingSampler")
    if name == "TrainingSampler":
        return TrainingOrder(len(records), seed)
    if name == "RepeatFactorTrainingSampler":
        factors = repeat_factors_from_category_frequency(
            records, float(dl.repeat_threshold), bool(dl.repeat_sqrt)
        )
        logger.info(
            "RepeatFactorTrainingSampler: threshold %g%s, %d of %d images repeated, "
            "%.1f positions per epoch on average",
            float(dl.repeat_threshold),
            " (sqrt)" if dl.repeat_sqrt else "",
            int(np.sum(factors > 1)),
            len(records),
            float(np.sum(factors)),
        )
        return RepeatFactorOrder(factors, seed)
    raise ValueError(f"config.dataloader.sampler_train must be one of {SAMPLERS}, got {name!r}")


def sampler_id(config) -> str:
    """A string naming the sampler and its settings (stored in the loader state)."""
    dl = config.dataloader
    name = dl.get("sampler_train", "TrainingSampler")
    if name == "RepeatFactorTrainingSampler":
        return f"{name}(threshold={float(dl.repeat_threshold)!r}, sqrt={bool(dl.repeat_sqrt)})"
    return name
