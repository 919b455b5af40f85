"""Dataset records, the checkpointable training loader and exact evaluation batches (host side).

Parity: Detectron2's `build_detection_train_loader` (`TrainingSampler`: an infinite, seeded
stream of shuffled epochs, one disjoint part per process; `DatasetMapper` as the map;
`AspectRatioGroupedDataset`: every batch is one aspect-ratio group) and
`build_detection_test_loader` (`InferenceSampler`: every image exactly once, in order, split
between processes).

Training stream: global batches planned on every host. All hosts walk the same seeded stream
of *all* N records: global position `p` is epoch `e = p // N` and record `perm_e[p % N]`, with
`perm_e` a new seeded permutation per epoch (grain `shuffle(seed)`, repeated). Its example is
`make_train_example(record, config, rng)` with `rng = default_rng([seed, e, record index])`, so
an example (its augmentation included) is a pure function of (seed, epoch, record index): the
same for any number of hosts or workers. With `dataloader.sampler_train =
"RepeatFactorTrainingSampler"` the epochs are instead Detectron2's repeat-factor epochs
(`samplers.RepeatFactorOrder`: rare-category images repeated, epochs of varying length) and the
generator also takes the appearance number of a repeated record within its epoch, so each copy
is augmented on its own. The batches are planned from the records' sizes alone,
identically on every host: the first draw of `rng` (the multi-scale short edge) fixes the
resized size and so the bucket (`train_padded_shape`); positions fall in stream order into
per-group queues (the bucket; one queue when aspect-ratio grouping is off) and a queue that
reaches the *global* batch `solver.ims_per_batch` is the next global batch (Detectron2's
`AspectRatioGroupedDataset`, applied to the global stream), padded to the largest padded shape
among its images. Host `h` of `n` loads only its slice `positions[h * b:(h + 1) * b]`, `b =
ims_per_batch // n`. Hence at every step all hosts bring the same padded shape, and the host
batches concatenated in host order are exactly the batch of a single host (`n = 1`) at that
step. Over the stream every position is in exactly one global batch, so each record is used
once per epoch; at any time fewer than `ims_per_batch` positions per group wait in the queues.
Deviation: Detectron2 groups per GPU process, so its batches depend on the number of GPUs.

Reading. Host slot `k` (the k-th image this host reads) is image `k % b` of its slice of global
batch `k // b`: a grain `MapDataset` over host slots maps each slot through the plan (which every
reader process extends lazily; integer work, tens of microseconds per position) to its record and
epoch and makes the example. Slots are read in order (grain threads / processes interleave their
slices round-robin, which keeps the order), so 0 and any number of workers give the same batches.

Checkpoint state. `TrainLoader.get_state()` is a small JSON-serialisable dict, the same on
every host::

    {"version": 2, "seed": int, "num_records": int,
     "ims_per_batch": int,                        # checked by set_state
     "sampler": str,                              # checked by set_state (samplers.sampler_id)
     "batch": int,                                # global batches returned so far
     "position": int,                             # next global position the plan reads
     "queues": [[group, [position, ...]], ...]}   # planned positions waiting in each group

No example is part of it: `set_state` restarts the grain pipeline at slot `batch * b` and the
plan at `position` with those queues, so a restored loader continues with exactly the batches
an uninterrupted one would have produced. Version 1 states (per-host grouping) are refused.

Evaluation. `eval_batches` plans the batches from the records' sizes alone (the test resize is
deterministic): records are grouped by padded shape, each group is cut into global batches of
`config.test.ims_per_batch` images and every host takes its slice of each, padded with
`example_valid = False`. All hosts step through the same sequence of shapes (collectives stay
in lock step); the union over hosts is the split, each image once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import grain
import numpy as np

from jax_rcnn.data import batching as B
from jax_rcnn.data import transforms as T
from jax_rcnn.data.coco import (
    filter_for_training,
    filter_images_with_few_keypoints,
    load_coco_json,
    load_lvis_json,
)
from jax_rcnn.data.samplers import sampler_id, train_order

logger = logging.getLogger(__name__)

STATE_VERSION = 2
SPLITS = ("train", "test")
SOURCES = ("coco", "shapes", "tfds", "people")
_NO_GROUPING = -1  # queue key when aspect-ratio grouping is off
_ENDLESS = sys.maxsize  # length of the host-slot MapDataset: the training stream never ends
_PLAN_WINDOW = 8  # planned global batches a reader process keeps for random access


def dataset_records(config, split: str) -> tuple[list[dict], dict]:
    """Loads the records of `config.data.source` for one split.

    Args:
        config: the full config (reads `config.data.*`, and for "train"
            `config.dataloader.filter_empty_annotations`).
        split: "train" or "test".

    Returns:
        `(records, meta)` as `load_coco_json` (or `load_lvis_json`) returns them, with
        `meta["json_file"]` the split's JSON (the evaluator's ground truth) and
        `meta["format"]` its annotation format ("coco" or "lvis"); the panoptic shapes variant
        adds each record's `sem_seg_file_name` and `meta["panoptic_json"]`,
        `meta["panoptic_png"]`. Training records have crowd instances removed (and, if
        `filter_empty_annotations`, images without instances; for keypoint models, images with
        fewer than `min_keypoints_per_image` visible keypoints).

    Raises:
        ValueError: unknown split or source, an empty path in the config, or no records.
        FileNotFoundError: a configured path does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    if data.source == "coco":
        paths = coco_paths(config, split)
        load = load_lvis_json if paths["format"] == "lvis" else load_coco_json
        records, meta = load(paths["json"], paths["images"], dataset_name=data.name)
        meta = {**meta, "json_file": paths["json"], "format": paths["format"]}
        if "sem_seg" in paths:  # a Detectron2 `*_panoptic_separated` name
            from jax_rcnn.data.panoptic import attach_sem_seg

            records = attach_sem_seg(records, paths["sem_seg"])
            meta["panoptic_json"] = paths["panoptic_json"]
            meta["panoptic_png"] = paths["panoptic_png"]
    elif data.source == "shapes":
        from jax_rcnn.data.shapes import config_paths

        paths = config_paths(config)
        which = "train" if split == "train" else "val"
        fmt = "lvis" if data.shapes.get("long_tail", False) else "coco"
        load = load_lvis_json if fmt == "lvis" else load_coco_json
        records, meta = load(
            paths[f"{which}_json"], paths[f"{which}_images"], dataset_name=f"shapes/{which}"
        )
        meta = {**meta, "json_file": paths[f"{which}_json"], "format": fmt}
        if f"{which}_sem_seg" in paths:  # the panoptic variant: the panoptic_separated layout
            from jax_rcnn.data.panoptic import attach_sem_seg

            records = attach_sem_seg(records, paths[f"{which}_sem_seg"])
            meta["panoptic_json"] = paths[f"{which}_panoptic_json"]
            meta["panoptic_png"] = paths[f"{which}_panoptic_png"]
    elif data.source == "people":
        from jax_rcnn.data.people import config_paths as people_paths

        paths = people_paths(config)
        which = "train" if split == "train" else "val"
        records, meta = load_coco_json(
            paths[f"{which}_json"], paths[f"{which}_images"], dataset_name=f"people/{which}"
        )
        meta = {**meta, "json_file": paths[f"{which}_json"]}
    elif data.source == "tfds":
        from jax_rcnn.data.tfds_source import load_tfds_records

        tfds_split = data.tfds_train_split if split == "train" else data.tfds_test_split
        records, meta = load_tfds_records(data.tfds_name, tfds_split, cache_dir=data.cache_dir)
    else:
        raise ValueError(f"config.data.source must be one of {SOURCES}, got {data.source!r}")
    meta = {"format": "coco", **meta}
    if split == "train":
        records = filter_for_training(records, bool(config.dataloader.filter_empty_annotations))
        if config.model.get("keypoint_on", False):
            if "keypoint_names" not in meta:
                raise ValueError(
                    f"config.model.keypoint_on is True but the {data.source!r} training data "
                    f"{meta.get('json_file', '')} has no keypoint category ('keypoints' names)"
                )
            min_kps = int(config.model.roi_keypoint_head.min_keypoints_per_image)
            if min_kps > 0:
                records = filter_images_with_few_keypoints(records, min_kps)
    if not records:
        raise ValueError(f"config.data.source={data.source!r}: the {split} split has no images")
    return records, meta


def coco_paths(config, split: str) -> dict[str, str]:
    """`{"json", "images", "format"}` of a "coco" split: `config.data.<split>.json/.images`, or,
    when both are empty, the paths of the Detectron2 builtin dataset `config.data.<split>.name`.
    "format" is the annotation format ("coco" or "lvis"): `config.data.format`, or with
    "auto" the builtin dataset's ("lvis" for `lvis_*` names), else "coco".

    Raises:
        ValueError: a path is empty and the name does not resolve (the message names the keys).
        FileNotFoundError: a path does not exist (the message names its key, or the dataset
            name and `$DETECTRON2_DATASETS`).
    """
    from jax_rcnn.data import builtin

    entry = config.data[split]
    key = f"config.data.{split}"
    paths = {"json": entry.json, "images": entry.images}
    origin = {f: f"{key}.{f}" for f in paths}
    fmt = config.data.get("format", "auto")
    if not (paths["json"] or paths["images"]) and entry.name:
        paths = builtin.resolve(entry.name, key)
        fmt = paths.pop("format") if fmt == "auto" else fmt
        origin = {
            f: f"{key}.{f} (Detectron2 dataset {entry.name!r} under ${builtin.ENV} = "
            f"{builtin.datasets_root()!r})"
            for f in paths
        }
    for field, path in paths.items():
        if not path:
            named = f" ({key}.name = {entry.name!r} is not used when a path is set)"
            raise ValueError(
                f"{key}.{field} is empty; set it to the COCO {field} path of the split"
                + (named if entry.name else "")
            )
        if not os.path.exists(path):
            raise FileNotFoundError(f"{origin[field]}: {path!r} does not exist")
    return {**paths, "format": "coco" if fmt == "auto" else fmt}


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # lazily: grain workers unpickle this module and need no jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    return int(shard_index), int(shard_count)


def _per_host(global_batch: int, shard_count: int, key: str) -> int:
    if global_batch <= 0 or global_batch % shard_count:
        raise ValueError(
            f"{key} = {global_batch} must be a positive multiple of the number of hosts "
            f"({shard_count})"
        )
    return global_batch // shard_count


def _mp_prefetch(ds, num_workers: int, buffer: int):
    """`ds.mp_prefetch` with `num_workers` processes (0: `ds` unchanged)."""
    if num_workers == 0:
        return ds
    from absl import flags

    # grain 0.2.x reads an absl flag when JAX is loaded and fails if no absl app parsed the
    # command line (google/grain#1355, fixed upstream by #1362); defaults are what we want.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=buffer)
    )


def train_padded_shape(
    height: int, width: int, config, rng: np.random.Generator
) -> tuple[int, tuple[int, int]]:
    """(bucket, padded (H, W)) of `make_train_example` for an image of `height x width`.

    Computed from the size alone: draws from `rng` exactly what `make_train_example` draws
    before it pads (the multi-scale short edge), so a generator in the same state gives both
    the same bucket and padded shape. The random flip, drawn next, changes neither.

    Args:
        height: the record's image height (`make_train_example` checks the file agrees).
        width: the record's image width.
        config: the full config (reads `config.input.*`).
        rng: the example's generator, `default_rng([seed, epoch, record index])`.

    Returns:
        `(bucket, (H, W))` as in the example's `bucket` and `image.shape[:2]`.
    """
    return B._padded_shape(*B.train_resized_size(height, width, config, rng), config)


class _Stream:
    """The global example stream: position -> record index, epoch, group and padded shape."""

    def __init__(self, config, records: Sequence[dict], seed: int):
        self.config, self.seed, self.num_records = config, seed, len(records)
        self.grouping = bool(config.dataloader.aspect_ratio_grouping)
        self.sizes = np.array([(r["height"], r["width"]) for r in records], np.int64)
        # TrainingSampler: a new seeded permutation per epoch; or RepeatFactorTrainingSampler.
        self.order = train_order(config, records, seed)

    def record(self, position: int) -> tuple[int, int, int]:
        """(record index, epoch, copy) of global position `position` (copy: the record's
        appearance number within its epoch, 0 unless the sampler repeats records)."""
        return self.order.record(position)

    def rng(self, record_index: int, epoch: int, copy: int = 0) -> np.random.Generator:
        """The example's generator: a pure function of (seed, epoch, record index, copy)."""
        key = [self.seed, epoch, record_index] + ([copy] if copy else [])
        return np.random.default_rng(key)

    def layout(self, position: int) -> tuple[int, tuple[int, int]]:
        """(group, padded (H, W)) of the example at `position`, without reading its image."""
        r, epoch, copy = self.record(position)
        h, w = self.sizes[r]
        bucket, shape = train_padded_shape(h, w, self.config, self.rng(r, epoch, copy))
        return (bucket if self.grouping else _NO_GROUPING), shape


class _PlannedBatch(NamedTuple):
    group: int
    positions: tuple[int, ...]  # the global batch's positions, in stream order
    shape: tuple[int, int]  # padded (H, W) of every image of the global batch


class _Plan:
    """Global batch index -> `_PlannedBatch`, planned lazily from a (checkpoint) frontier.

    Random access by batch index for the reader processes: the last `_PLAN_WINDOW` batches
    are kept; an older one is replanned from the starting frontier.
    """

    def __init__(self, stream: _Stream, global_batch: int, frontier: dict | None = None):
        self.stream, self.global_batch = stream, global_batch
        self._start = frontier or {"batch": 0, "position": 0, "queues": []}
        self._restart()

    def _restart(self) -> None:
        start = self._start
        self._next_batch, self._position = int(start["batch"]), int(start["position"])
        self._queues: dict[int, list[tuple[int, tuple[int, int]]]] = {}
        for group, positions in start["queues"]:
            queue = []
            for p in positions:
                g, shape = self.stream.layout(int(p))
                if g != group:
                    raise ValueError(
                        "loader state does not match the records or config (position "
                        f"{p} is in group {g}, the state queues it in group {group})"
                    )
                queue.append((int(p), shape))
            self._queues[int(group)] = queue
        self._batches: dict[int, _PlannedBatch] = {}

    def frontier(self) -> dict:
        """`{"batch", "position", "queues"}` after the batches planned so far (JSON)."""
        return {
            "batch": self._next_batch,
            "position": self._position,
            "queues": [[g, [p for p, _ in q]] for g, q in sorted(self._queues.items()) if q],
        }

    def _plan_next(self) -> None:
        while True:
            position = self._position
            group, shape = self.stream.layout(position)
            self._position += 1
            queue = self._queues.setdefault(group, [])
            queue.append((position, shape))
            if len(queue) == self.global_batch:
                positions = tuple(p for p, _ in queue)
                hw = (max(s[0] for _, s in queue), max(s[1] for _, s in queue))
                queue.clear()
                self._batches[self._next_batch] = _PlannedBatch(group, positions, hw)
                self._batches.pop(self._next_batch - _PLAN_WINDOW, None)
                self._next_batch += 1
                return

    def batch(self, index: int) -> _PlannedBatch:
        """The planned global batch number `index` (>= the starting frontier's batch)."""
        if index < int(self._start["batch"]):
            raise IndexError(f"batch {index} is before this plan's start {self._start['batch']}")
        if index < self._next_batch and index not in self._batches:
            self._restart()
        while index >= self._next_batch:
            self._plan_next()
        return self._batches[index]


class _TrainExample:
    """grain map: host slot k -> (k, global position, example padded to its batch's shape).

    Slot k is image `k % b` of this host's slice of global batch `k // b`; every reader
    process extends its own copy of the plan (integers only).
    """

    def __init__(self, config, records, plan: _Plan, shard_index: int, batch_size: int):
        self.config, self.records, self.plan = config, records, plan
        self.shard_index, self.batch_size = shard_index, batch_size

    def __call__(self, slot: int) -> tuple[int, int, dict]:
        index, i = divmod(slot, self.batch_size)
        planned = self.plan.batch(index)
        position = planned.positions[self.shard_index * self.batch_size + i]
        stream = self.plan.stream
        r, epoch, copy = stream.record(position)
        example = B.make_train_example(self.records[r], self.config, stream.rng(r, epoch, copy))
        h, w = example["image"].shape[:2]
        group = int(example["bucket"]) if stream.grouping else _NO_GROUPING
        if group != planned.group or h > planned.shape[0] or w > planned.shape[1]:
            raise RuntimeError(
                f"record {r} (epoch {epoch}) gave a {h}x{w} example in group {group}, but the "
                f"plan put it in group {planned.group} of shape {planned.shape}: "
                "train_padded_shape no longer follows make_train_example"
            )
        if (h, w) != planned.shape:
            example["image"] = B.pad_image(example["image"], planned.shape)
        return slot, position, example


def _read_options(buffer: int) -> grain.ReadOptions:
    # One reader thread per process: the work is CPU-bound Python (the GIL), and
    # more threads only multiply the memory held in flight.
    return grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(buffer, 1))


class TrainLoader:
    """Infinite iterator of training batches, planned globally by bucket and checkpointable.

    Example::

        records, _ = dataset_records(config, "train")
        loader = TrainLoader(config, records)
        batch = next(loader)             # dict of u8/f32/i32/bool arrays, leading axis B
        state = loader.get_state()       # JSON-serialisable; save it with the model
        ...
        loader = TrainLoader(config, records)
        loader.set_state(state)          # continues with the very next batch

    Batches are `collate`d `make_train_example` dicts, this host's slice of each global batch
    (module docstring): B = `config.solver.ims_per_batch // shard_count` images, image
    u8[B, H, W, 3] with (H, W) the same on every host at each step. Call `close()` (or use it
    as a context manager) to stop workers.
    """

    def __init__(
        self,
        config,
        records: Sequence[dict],
        *,
        shard_index: int | None = None,
        shard_count: int | None = None,
        num_workers: int | None = None,
        seed: int | None = None,
    ):
        """Builds the loader (no worker starts until the first batch is asked for).

        Args:
            config: the full config (`input`, `model.mask_on`, `dataloader`, `solver`, `seed`).
            records: training records (`dataset_records(config, "train")`), the same list in
                the same order on every host.
            shard_index: this host (default `jax.process_index()`).
            shard_count: number of hosts (default `jax.process_count()`).
            num_workers: grain worker processes (default `config.dataloader.num_workers`;
                0 reads in this process).
            seed: shuffle and augmentation seed (default `config.seed`), the same on every host.
        """
        self.shard_index, self.shard_count = _process_shard(shard_index, shard_count)
        self.ims_per_batch = int(config.solver.ims_per_batch)
        self.batch_size = _per_host(
            self.ims_per_batch, self.shard_count, "config.solver.ims_per_batch"
        )
        self.seed = int(config.seed if seed is None else seed)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"the loader seed must be in [0, 2**32), got {self.seed}")
        self.num_workers = int(
            config.dataloader.num_workers if num_workers is None else num_workers
        )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not records:
            raise ValueError("TrainLoader: no training records")
        self.config, self.records, self.num_records = config, records, len(records)
        self._stream = _Stream(config, records, self.seed)
        self.sampler = sampler_id(config)
        self._plan = _Plan(self._stream, self.ims_per_batch)
        self._frontier = self._plan.frontier()  # of the batches returned so far
        self._iterator = None

    def _start(self):
        # The readers' plan starts where this host stands; it is independent of `self._plan`
        # (which only advances as batches are returned, so `get_state` is exact).
        plan = _Plan(self._stream, self.ims_per_batch, self._frontier)
        transform = _TrainExample(
            self.config, self.records, plan, self.shard_index, self.batch_size
        )
        first_slot = self._frontier["batch"] * self.batch_size
        ds = (
            grain.MapDataset.range(first_slot, _ENDLESS)
            .map(transform)
            .to_iter_dataset(_read_options(self.batch_size))
        )
        return iter(_mp_prefetch(ds, self.num_workers, self.batch_size))

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._start()
        index = self._frontier["batch"]
        planned = self._plan.batch(index)
        mine = planned.positions[self.shard_index * self.batch_size :][: self.batch_size]
        examples = []
        for i, expected in enumerate(mine):
            slot, position, example = next(self._iterator)
            if (slot, position) != (index * self.batch_size + i, expected):
                raise RuntimeError(
                    f"grain returned slot {slot} (position {position}), expected slot "
                    f"{index * self.batch_size + i} (position {expected})"
                )
            examples.append(example)
        self._frontier = self._plan.frontier()
        return B.collate(examples)

    @property
    def epoch(self) -> int:
        """Epoch of the next global position the plan reads."""
        return self._stream.order.epoch(self._frontier["position"])

    def get_state(self) -> dict:
        """JSON-serialisable state, the same on every host (format in the module docstring)."""
        f = self._frontier
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "num_records": self.num_records,
            "ims_per_batch": self.ims_per_batch,
            "sampler": self.sampler,
            "batch": f["batch"],
            "position": f["position"],
            "queues": [[g, list(ps)] for g, ps in f["queues"]],
        }

    def set_state(self, state: dict) -> None:
        """Continues from a `get_state()` of a loader with the same config, records and seed.

        The state of any host will do (it is global); the number of hosts may differ.

        Raises:
            ValueError: the state is from another version, seed, record count or global
                batch size, or is inconsistent with the records and config.
        """
        version = state.get("version")
        if version != STATE_VERSION:
            why = (
                "it was written by the per-host loader (each host grouped its own shard), whose "
                "stream this loader cannot continue"
                if version == 1
                else "unknown format"
            )
            raise ValueError(f"loader state version {version} != {STATE_VERSION}: {why}")
        state = {"sampler": "TrainingSampler", **state}  # states before the sampler key
        for key in ("seed", "num_records", "ims_per_batch", "sampler"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]} but this loader has "
                    f"{key}={getattr(self, key)} (different config or records)"
                )
        batch, position = int(state["batch"]), int(state["position"])
        queued = [len(ps) for _, ps in state["queues"]]
        if min(batch, position) < 0 or position != batch * self.ims_per_batch + sum(queued):
            raise ValueError(
                f"inconsistent loader state: {batch} batches of {self.ims_per_batch} and "
                f"{sum(queued)} queued examples do not add up to position {position}"
            )
        frontier = {"batch": batch, "position": position, "queues": state["queues"]}
        plan = _Plan(self._stream, self.ims_per_batch, frontier)  # checks the queued groups
        self.close()
        self._plan, self._frontier = plan, plan.frontier()

    def close(self) -> None:
        """Stops the grain workers (a later `next` restarts them at the same place)."""
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
            self._iterator = None

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _test_padded_shape(record: dict, config) -> tuple[int, int, int]:
    """(bucket, H, W) of `make_test_example(record)`, from the record's size alone."""
    cfg = config.input
    h, w = int(record["height"]), int(record["width"])
    if cfg.min_size_test:
        h, w = T.resize_shortest_edge_shape(h, w, cfg.min_size_test, cfg.max_size_test)
    bucket, (ph, pw) = B._padded_shape(h, w, config)
    return bucket, ph, pw


def _padding_example(bucket: int, shape: tuple[int, int]) -> dict:
    return {
        "image": np.zeros((*shape, 3), np.uint8),
        "image_size": np.zeros(2, np.int32),
        "original_size": np.zeros(2, np.int32),
        "image_id": np.int64(-1),
        "example_valid": np.bool_(False),
        "bucket": np.int32(bucket),
    }


def eval_plan(
    config, records: Sequence[dict], shard_index: int, shard_count: int
) -> list[tuple[tuple[int, int, int], list[int]]]:
    """This host's evaluation batches: `[((bucket, H, W), [record index, ...]), ...]`.

    Groups are visited in sorted (bucket, H, W) order, records within a group in their order;
    every host gets the same list of groups and batch count (a batch's list may be short or
    empty: it is padded).
    """
    per_host = _per_host(int(config.test.ims_per_batch), shard_count, "config.test.ims_per_batch")
    global_batch = per_host * shard_count
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(_test_padded_shape(r, config), []).append(i)
    plan = []
    for key in sorted(groups):
        idx = groups[key]
        for start in range(0, len(idx), global_batch):
            chunk = idx[start : start + global_batch]
            plan.append((key, chunk[shard_index * per_host : (shard_index + 1) * per_host]))
    return plan


class _TestExample:
    def __init__(self, config):
        self.config = config

    def __call__(self, record: dict) -> dict:
        return B.make_test_example(record, self.config)


def eval_batches(
    config,
    records: Sequence[dict],
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int | None = None,
) -> Iterator[dict]:
    """The whole split once, in a fixed order, in padded batches of one shape each.

    Args:
        config: the full config (`input`, `test.ims_per_batch`, `dataloader.num_workers`).
        records: the split's records (`dataset_records(config, "test")`).
        shard_index: this host (default `jax.process_index()`).
        shard_count: number of hosts (default `jax.process_count()`).
        num_workers: grain worker processes (default `config.dataloader.num_workers`).

    Yields:
        `collate`d `make_test_example` batches of B = `config.test.ims_per_batch //
        shard_count` (the global batch is split between hosts); missing slots have
        `example_valid = False` and `image_id = -1`. Every host yields the same number of
        batches with the same sequence of padded shapes.
    """
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    per_host = int(config.test.ims_per_batch) // shard_count
    plan = eval_plan(config, records, shard_index, shard_count)
    order = [i for _, idx in plan for i in idx]
    workers = int(config.dataloader.num_workers if num_workers is None else num_workers)
    ds = (
        grain.MapDataset.source([records[i] for i in order])
        .map(_TestExample(config))
        .to_iter_dataset(_read_options(per_host))
    )
    it = iter(_mp_prefetch(ds, workers if order else 0, per_host))
    try:
        for (bucket, ph, pw), idx in plan:
            examples = [next(it) for _ in idx]
            for i, e in zip(idx, examples, strict=True):
                image_id = records[i]["image_id"]
                if int(e["image_id"]) != image_id or e["image"].shape[:2] != (ph, pw):
                    raise RuntimeError(f"eval example of image {image_id} is not where planned")
            yield B.collate(examples or [_padding_example(bucket, (ph, pw))], per_host)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
