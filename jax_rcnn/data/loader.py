"""Dataset records, the checkpointable training loader and exact evaluation batches (host side).

Parity: Detectron2's `build_detection_train_loader` (`TrainingSampler`: an infinite, seeded
stream of shuffled epochs, one disjoint part per process; `DatasetMapper` as the map;
`AspectRatioGroupedDataset`: every batch is one aspect-ratio group) and
`build_detection_test_loader` (`InferenceSampler`: every image exactly once, in order, split
between processes).

Training stream. On each host the records of its shard (`records[shard_index::shard_count]`)
form a grain `MapDataset` that is shuffled with `seed` (a new permutation per epoch) and
repeated forever. Host example position `p` is epoch `p // len(shard)`; its example is
`make_train_example(record, config, rng)` with `rng = default_rng([seed, epoch, record index])`,
so an example is a pure function of `p` -- the same for any number of workers, and the same
record gets the same augmentation in the same epoch whatever the sharding. Examples are read
in order (grain threads / processes interleave their slices round-robin, which keeps the
order) and fall into per-group queues (the `bucket`; one queue when aspect-ratio grouping is
off); a queue that reaches the per-host batch size is collated and emitted (Detectron2's
`AspectRatioGroupedDataset`).

Checkpoint state. `TrainLoader.get_state()` is a small JSON-serialisable dict::

    {"version": 1, "seed": int, "shard_index": int, "shard_count": int,
     "shard_size": int, "batch_size": int,   # checked by set_state
     "position": int,                         # next host example position to read
     "queues": [[group, [position, ...]], ...]}  # examples waiting in each group queue

The prefetched but unconsumed examples are not part of it: `set_state` restarts the grain
pipeline at `position` and recomputes the queued examples from their positions, so a restored
loader continues with exactly the batches an uninterrupted one would have produced.

Evaluation. `eval_batches` plans the batches from the records' sizes alone (the test resize is
deterministic): records are grouped by padded shape, each group is cut into global batches of
`config.test.ims_per_batch` images and every host takes its slice of each, padded with
`example_valid = False`. All hosts step through the same sequence of shapes (collectives stay
in lock step); the union over hosts is the split, each image once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from jax_rcnn.data import batching as B
from jax_rcnn.data import transforms as T
from jax_rcnn.data.coco import filter_for_training, load_coco_json

logger = logging.getLogger(__name__)

STATE_VERSION = 1
SPLITS = ("train", "test")
SOURCES = ("coco", "shapes", "tfds")
_NO_GROUPING = -1  # queue key when aspect-ratio grouping is off


def dataset_records(config, split: str) -> tuple[list[dict], dict]:
    """Loads the records of `config.data.source` for one split.

    Args:
        config: the full config (reads `config.data.*`, and for "train"
            `config.dataloader.filter_empty_annotations`).
        split: "train" or "test".

    Returns:
        `(records, meta)` as `load_coco_json` returns them, with `meta["json_file"]` the
        split's COCO JSON (the evaluator's ground truth). Training records have crowd
        instances removed (and, if `filter_empty_annotations`, images without instances).

    Raises:
        ValueError: unknown split or source, an empty path in the config, or no records.
        FileNotFoundError: a configured path does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    if data.source == "coco":
        paths = {}
        for field in ("json", "images"):
            key = f"config.data.{split}.{field}"
            path = data[split][field]
            if not path:
                raise ValueError(f"{key} is empty; set it to the COCO {field} path of the split")
            if not os.path.exists(path):
                raise FileNotFoundError(f"{key} = {path!r} does not exist")
            paths[field] = path
        records, meta = load_coco_json(paths["json"], paths["images"], dataset_name=data.name)
        meta = {**meta, "json_file": paths["json"]}
    elif data.source == "shapes":
        from jax_rcnn.data.shapes import ensure_shapes_dataset

        shapes = data.shapes
        paths = ensure_shapes_dataset(
            data.cache_dir or None,
            num_train=shapes.num_train,
            num_val=shapes.num_val,
            image_size=tuple(shapes.image_size),
            seed=shapes.seed,
        )
        which = "train" if split == "train" else "val"
        records, meta = load_coco_json(
            paths[f"{which}_json"], paths[f"{which}_images"], dataset_name=f"shapes/{which}"
        )
        meta = {**meta, "json_file": paths[f"{which}_json"]}
    elif data.source == "tfds":
        from jax_rcnn.data.tfds_source import load_tfds_records

        tfds_split = data.tfds_train_split if split == "train" else data.tfds_test_split
        records, meta = load_tfds_records(data.tfds_name, tfds_split, cache_dir=data.cache_dir)
    else:
        raise ValueError(f"config.data.source must be one of {SOURCES}, got {data.source!r}")
    if split == "train":
        records = filter_for_training(records, bool(config.dataloader.filter_empty_annotations))
    if not records:
        raise ValueError(f"config.data.source={data.source!r}: the {split} split has no images")
    return records, meta


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


class _TrainExample:
    """grain `map_with_index` transform: (host position, (record index, record)) -> example."""

    def __init__(self, config, seed: int, shard_size: int):
        self.config, self.seed, self.shard_size = config, seed, shard_size

    def __call__(self, position: int, item: tuple[int, dict]) -> tuple[int, dict]:
        record_index, record = item
        epoch = position // self.shard_size
        rng = np.random.default_rng([self.seed, epoch, record_index])
        return position, B.make_train_example(record, self.config, rng)


def _read_options(buffer: int) -> grain.ReadOptions:
    # One reader thread per process: the work is CPU-bound Python (the GIL), and
    # more threads only multiply the memory held in flight.
    return grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(buffer, 1))


class TrainLoader:
    """Infinite iterator of training batches, grouped by bucket and checkpointable.

    Example::

        records, _ = dataset_records(config, "train")
        loader = TrainLoader(config, records)
        batch = next(loader)             # dict of u8/f32/i32/bool arrays, leading axis B
        state = loader.get_state()       # JSON-serialisable; save it with the model
        ...
        loader = TrainLoader(config, records)
        loader.set_state(state)          # continues with the very next batch

    Batches are `collate`d `make_train_example` dicts with B = `config.solver.ims_per_batch //
    shard_count` (per host). Call `close()` (or use it as a context manager) to stop workers.
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
            records: training records (`dataset_records(config, "train")`).
            shard_index: this host's shard (default `jax.process_index()`).
            shard_count: number of shards (default `jax.process_count()`).
            num_workers: grain worker processes (default `config.dataloader.num_workers`;
                0 reads in this process).
            seed: shuffle and augmentation seed (default `config.seed`).
        """
        self.shard_index, self.shard_count = _process_shard(shard_index, shard_count)
        self.batch_size = _per_host(
            int(config.solver.ims_per_batch), self.shard_count, "config.solver.ims_per_batch"
        )
        self.seed = int(config.seed if seed is None else seed)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"the loader seed must be in [0, 2**32), got {self.seed}")
        self.num_workers = int(
            config.dataloader.num_workers if num_workers is None else num_workers
        )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        self.grouping = bool(config.dataloader.aspect_ratio_grouping)
        shard = [(i, records[i]) for i in range(self.shard_index, len(records), self.shard_count)]
        if not shard:
            raise ValueError(
                f"shard {self.shard_index} of {self.shard_count} has no training images "
                f"({len(records)} records)"
            )
        self.shard_size = len(shard)
        # Position p -> (p, example p); random access, so any position can be recomputed.
        self._examples = (
            grain.MapDataset.source(shard)
            .shuffle(seed=self.seed)
            .repeat(None)
            .map_with_index(_TrainExample(config, self.seed, self.shard_size))
        )
        self._position = 0
        self._queues: dict[int, list[tuple[int, dict]]] = {}
        self._iterator = None

    def _start(self):
        ds = self._examples[self._position :].to_iter_dataset(_read_options(self.batch_size))
        return iter(_mp_prefetch(ds, self.num_workers, self.batch_size))

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._start()
        while True:
            position, example = next(self._iterator)
            if position != self._position:
                raise RuntimeError(f"grain returned example {position}, expected {self._position}")
            self._position += 1
            queue = self._queues.setdefault(self._group(example), [])
            queue.append((position, example))
            if len(queue) == self.batch_size:
                batch = B.collate([e for _, e in queue])
                queue.clear()
                return batch

    def _group(self, example: dict) -> int:
        return int(example["bucket"]) if self.grouping else _NO_GROUPING

    @property
    def epoch(self) -> int:
        """Epoch of the next example to be read on this host."""
        return self._position // self.shard_size

    def get_state(self) -> dict:
        """JSON-serialisable state (format in the module docstring)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "shard_index": self.shard_index,
            "shard_count": self.shard_count,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "position": self._position,
            "queues": [[g, [p for p, _ in q]] for g, q in sorted(self._queues.items()) if q],
        }

    def set_state(self, state: dict) -> None:
        """Continues from a `get_state()` of a loader with the same config, records and shard.

        Raises:
            ValueError: the state is from another version, seed, shard or batch size.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        for key in ("seed", "shard_index", "shard_count", "shard_size", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]} but this loader has "
                    f"{key}={getattr(self, key)} (different config, records or hosts)"
                )
        self.close()
        self._position = int(state["position"])
        self._queues = {}
        for group, positions in state["queues"]:
            # Recomputed in this process: at most (groups x (batch - 1)) examples.
            queue = [self._examples[int(p)] for p in positions]
            if any(self._group(e) != group for _, e in queue):
                raise ValueError("loader state does not match the records (group changed)")
            self._queues[int(group)] = queue

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
