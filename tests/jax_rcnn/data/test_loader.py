"""TrainLoader / eval_batches: determinism, exact checkpoint restore, sharding, grouping."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest
from PIL import Image

from configs import common
from jax_rcnn.data import loader as L
from jax_rcnn.data.coco import load_coco_json

# Image sizes (h, w): landscape, portrait and square, so both buckets fill.
_SIZES = ((30, 40), (40, 30), (36, 36), (24, 40), (40, 24))


def _write_coco(tmp_path, num_images: int, seed: int = 0) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images, annotations = [], []
    for i in range(num_images):
        h, w = _SIZES[int(rng.integers(len(_SIZES)))]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(int(rng.integers(0, 3)) + (i % 4 != 3)):  # every 4th may be empty
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + i,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [x, y, bw, bh],
                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
                    "iscrowd": 0,
                    "area": bw * bh,
                }
            )
    categories = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return str(path), str(img_dir)


def _config(json_file: str = "", images: str = "", **overrides):
    config = common.base_config(mask_on=True)
    common.smoke(config)
    config.data.source = "coco"
    config.data.train.json = config.data.test.json = json_file
    config.data.train.images = config.data.test.images = images
    i = config.input
    i.min_size_train, i.max_size_train = (24, 32), 48
    i.min_size_test, i.max_size_test = 32, 48
    i.buckets = ((32, 48), (48, 32))
    i.gt_mask_size = 8
    config.solver.ims_per_batch = 2
    config.test.ims_per_batch = 2
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(config[section], name, value)
    return config


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return _write_coco(tmp_path_factory.mktemp("coco"), 23)


@pytest.fixture(scope="module")
def train_records(coco):
    return L.dataset_records(_config(*coco), "train")[0]


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _loader(config, records, **kw):
    kw = {"shard_index": 0, "shard_count": 1, "num_workers": 0, **kw}
    return L.TrainLoader(config, records, **kw)


def test_dataset_records_errors(tmp_path, coco):
    with pytest.raises(ValueError, match=r"config\.data\.train\.json is empty"):
        L.dataset_records(_config(), "train")
    with pytest.raises(FileNotFoundError, match=r"config\.data\.test\.images"):
        L.dataset_records(_config(coco[0], str(tmp_path / "nope")), "test")
    with pytest.raises(ValueError, match="split"):
        L.dataset_records(_config(*coco), "val")
    config = _config(*coco)
    config.data.source = "lmdb"
    with pytest.raises(ValueError, match="config.data.source"):
        L.dataset_records(config, "test")


def test_dataset_records_filters_train_only(coco, train_records):
    test_records, meta = L.dataset_records(_config(*coco), "test")
    assert len(test_records) == 23 and meta["json_file"] == coco[0]
    assert 0 < len(train_records) < 23
    assert all(r["annotations"] for r in train_records)


def test_dataset_records_shapes(tmp_path):
    config = _config()
    config.data.source = "shapes"
    config.data.cache_dir = str(tmp_path)
    config.data.shapes.num_train, config.data.shapes.num_val = 5, 3
    config.data.shapes.image_size = (32, 40)
    test_records, meta = L.dataset_records(config, "test")
    assert len(test_records) == 3 and len(meta["thing_classes"]) == 8
    assert test_records[0]["height"] == 32 and test_records[0]["width"] == 40


def test_same_seed_same_batches_and_buckets(train_records):
    config = _config()
    a = _take(_loader(config, train_records), 12)
    b = _take(_loader(config, train_records), 12)
    _assert_same(a, b)
    other = _take(_loader(config, train_records, seed=1), 12)
    assert any(
        not np.array_equal(x["image_id"], y["image_id"]) for x, y in zip(a, other, strict=True)
    )
    buckets = set()
    for batch in a:
        assert batch["image"].shape[0] == 2 and batch["example_valid"].all()
        assert len(set(batch["bucket"].tolist())) == 1  # one aspect-ratio group per batch
        h, w = config.input.buckets[int(batch["bucket"][0])]
        assert batch["image"].shape[1:3] == (h, w)
        buckets.add(int(batch["bucket"][0]))
    assert buckets == {0, 1}


def test_every_epoch_visits_each_record_once(train_records):
    config = _config(dataloader__aspect_ratio_grouping=False, solver__ims_per_batch=1)
    loader = _loader(config, train_records)
    n = len(train_records)
    ids = [int(b["image_id"][0]) for b in _take(loader, 2 * n)]
    expected = sorted(r["image_id"] for r in train_records)
    assert sorted(ids[:n]) == expected and sorted(ids[n:]) == expected
    assert ids[:n] != ids[n:]  # reshuffled each epoch
    assert loader.epoch == 2


@pytest.mark.parametrize("restore_after", [3, 7, 13])  # 13 batches cross an epoch boundary
def test_restore_gives_the_uninterrupted_batches(train_records, restore_after):
    config = _config()
    n = len(train_records)
    reference = _take(_loader(config, train_records), restore_after + 6)
    loader = _loader(config, train_records)
    _take(loader, restore_after)
    state = json.loads(json.dumps(loader.get_state()))  # must survive JSON
    assert state["position"] >= 2 * restore_after
    if restore_after == 13:
        assert state["position"] > n  # mid-second-epoch
    loader.close()
    restored = _loader(config, train_records)
    restored.set_state(state)
    _assert_same(reference[restore_after:], _take(restored, 6))


def test_restore_state_with_queued_examples(train_records):
    config = _config()
    loader = _loader(config, train_records)
    states = []
    for _ in range(10):
        next(loader)
        states.append(loader.get_state())
    queued = [s for s in states if s["queues"]]
    assert queued, "the test needs a state with an example waiting in a bucket queue"
    reference = _take(_loader(config, train_records), 16)
    k = states.index(queued[0]) + 1
    restored = _loader(config, train_records)
    restored.set_state(queued[0])
    _assert_same(reference[k : k + 5], _take(restored, 5))


def test_set_state_rejects_other_loader(train_records):
    state = _loader(_config(), train_records).get_state()
    with pytest.raises(ValueError, match="seed"):
        _loader(_config(), train_records, seed=3).set_state(state)
    with pytest.raises(ValueError, match="ims_per_batch"):
        _loader(_config(solver__ims_per_batch=4), train_records).set_state(state)
    with pytest.raises(ValueError, match="num_records"):
        _loader(_config(), train_records[:-1]).set_state(state)
    with pytest.raises(ValueError, match="version 1 .* per-host loader"):
        _loader(_config(), train_records).set_state({**state, "version": 1})
    with pytest.raises(ValueError, match="inconsistent loader state"):
        _loader(_config(), train_records).set_state({**state, "position": 5})


def test_batch_must_divide_between_hosts(train_records):
    with pytest.raises(ValueError, match="ims_per_batch"):
        _loader(_config(solver__ims_per_batch=3), train_records, shard_count=2)


def _host_loaders(config, records, shard_count, **kw):
    return [
        _loader(config, records, shard_index=h, shard_count=shard_count, **kw)
        for h in range(shard_count)
    ]


def _global_batches(loaders, n):
    """n steps of every host: [[host 0's batch, host 1's batch, ...], ...]."""
    return [[next(loader) for loader in loaders] for _ in range(n)]


def _concat(host_batches):
    return {k: np.concatenate([b[k] for b in host_batches]) for k in host_batches[0]}


def test_hosts_split_each_global_batch_without_grouping(train_records):
    config = _config(dataloader__aspect_ratio_grouping=False, solver__ims_per_batch=3)
    loaders = _host_loaders(config, train_records, 3)
    assert [loader.batch_size for loader in loaders] == [1, 1, 1]
    n = len(train_records)
    steps = _global_batches(loaders, -(-n // 3))
    # Global position 3 j + h is host h's image at step j; the first n positions are epoch 0.
    ids = [int(b["image_id"][0]) for hosts in steps for b in hosts][:n]
    assert sorted(ids) == sorted(r["image_id"] for r in train_records)


@pytest.mark.parametrize(
    ("shard_count", "pad_mode"), [(2, "buckets"), (4, "buckets"), (2, "size_divisibility")]
)
def test_hosts_agree_and_together_give_the_single_host_batch(train_records, shard_count, pad_mode):
    # Landscape and portrait records, two buckets (or, under size_divisibility, two groups
    # whose images pad to several shapes): hosts that grouped their own shards would disagree.
    config = _config(solver__ims_per_batch=4, input__pad_mode=pad_mode)
    steps = 18  # 72 positions: more than 3 epochs of the 21 records
    single = _loader(config, train_records)
    reference = _take(single, steps)
    assert single.epoch >= 3
    per_host = _global_batches(_host_loaders(config, train_records, shard_count), steps)
    shapes, padded_for_others, d = set(), 0, config.input.size_divisibility
    for step, (ref, hosts) in enumerate(zip(reference, per_host, strict=True)):
        assert len({b["image"].shape for b in hosts}) == 1, step
        assert hosts[0]["image"].shape[0] == 4 // shard_count
        assert len(set(ref["bucket"].tolist())) == 1, step
        _assert_same([ref], [_concat(hosts)])
        shapes.add(ref["image"].shape[1:3])
        for b in hosts:  # would this host's own images have padded to less?
            own = -(-b["image_size"].max(0) // d) * d
            padded_for_others += tuple(own) != b["image"].shape[1:3]
    assert len(shapes) == 2  # both orientations
    if pad_mode == "size_divisibility":
        assert padded_for_others > 0


def test_each_record_once_per_epoch_across_hosts(train_records):
    """The exact property: between two states the plan consumes (reads and dequeues) exactly
    the positions of the global batch returned; the hosts' images of that batch, in host order,
    are the examples of those positions, i.e. of record `perm_e[p % N]` in epoch `e = p // N`
    made with `default_rng([seed, e, record])`. So every position is in exactly one global
    batch, fewer than `ims_per_batch` per group wait in the queues, and each record appears once
    per epoch: exactly once for every epoch whose positions are all consumed."""
    config = _config(solver__ims_per_batch=4)
    n, seed = len(train_records), int(config.seed)
    perm = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
    loaders = _host_loaders(config, train_records, 2)
    consumed: set[int] = set()
    appearances = []  # (epoch, image_id) of every example returned
    for _ in range(20):
        hosts = [next(loader) for loader in loaders]
        state = loaders[0].get_state()
        assert loaders[1].get_state() == state  # the plan is global
        queued = [p for _, ps in state["queues"] for p in ps]
        assert all(len(ps) < 4 for _, ps in state["queues"])
        now = set(range(state["position"])) - set(queued)
        assert consumed < now
        positions = sorted(now - consumed)
        consumed = now
        batch = _concat(hosts)
        assert len(positions) == 4
        for p, image, image_id in zip(positions, batch["image"], batch["image_id"], strict=True):
            e, r = p // n, int(perm[p])
            assert image_id == train_records[r]["image_id"]
            example = L.B.make_train_example(
                train_records[r], config, np.random.default_rng([seed, e, r])
            )
            h, w = example["image"].shape[:2]
            np.testing.assert_array_equal(image[:h, :w], example["image"])
            appearances.append((e, int(image_id)))
    assert len(appearances) == len(set(appearances))  # at most once per epoch
    all_ids = sorted(r["image_id"] for r in train_records)
    full_epochs = [e for e in range(4) if set(range(e * n, (e + 1) * n)) <= consumed]
    assert full_epochs == [0, 1, 2]
    for e in full_epochs:
        assert sorted(i for ep, i in appearances if ep == e) == all_ids


def test_restore_one_host_of_two(train_records):
    config = _config(solver__ims_per_batch=4)
    n = len(train_records)
    host = _loader(config, train_records, shard_index=1, shard_count=2)
    reference, states = [], []
    for _ in range(16):
        reference.append(next(host))
        states.append(host.get_state())
    # Mid-epoch with an image waiting in a queue: in epoch 0 (the next 6 batches cross into
    # epoch 1) and in epoch 1.
    picks = [
        next(k for k, s in enumerate(states) if s["queues"] and lo < s["position"] < lo + n)
        for lo in (0, n)
    ]
    for k in picks:
        restored = _loader(config, train_records, shard_index=1, shard_count=2)
        restored.set_state(json.loads(json.dumps(states[k])))  # must survive JSON
        _assert_same(reference[k + 1 : k + 7], _take(restored, 6))
    assert states[picks[0] + 6]["position"] > n
    # The state is global: one host can continue from it alone with the whole global batches.
    k = picks[1]
    reference = _take(_loader(config, train_records), k + 7)[k + 1 :]
    alone = _loader(config, train_records)
    alone.set_state(states[k])
    _assert_same(reference, _take(alone, 6))


@pytest.mark.parametrize("sampling", ["choice", "range"])
def test_planned_bucket_is_the_loaded_examples(train_records, sampling):
    # Four buckets and multi-scale training: the random short edge changes an image's bucket.
    config = _config(
        input__buckets=((32, 32), (32, 48), (48, 32), (48, 48)),
        input__min_size_train=(24, 32, 40) if sampling == "choice" else (24, 40),
        input__min_size_train_sampling=sampling,
    )
    seed = int(config.seed)
    buckets: dict[int, set[int]] = {}
    for r, record in enumerate(train_records[:8]):
        for epoch in range(4):
            rng = np.random.default_rng([seed, epoch, r])
            planned = L.train_padded_shape(record["height"], record["width"], config, rng)
            rng = np.random.default_rng([seed, epoch, r])
            example = L.B.make_train_example(record, config, rng)
            assert planned == (int(example["bucket"]), example["image"].shape[:2])
            buckets.setdefault(r, set()).add(planned[0])
    assert any(len(b) > 1 for b in buckets.values())
    # The loader checks every example against its plan.
    hosts = _global_batches(_host_loaders(config, train_records, 2), 8)
    assert len({hosts[j][0]["image"].shape[1:3] for j in range(8)}) >= 2


@pytest.mark.slow
@pytest.mark.parametrize(("shard_index", "shard_count"), [(0, 1), (1, 2)])
def test_workers_give_identical_batches(train_records, shard_index, shard_count):
    config = _config(solver__ims_per_batch=4)
    kw = {"shard_index": shard_index, "shard_count": shard_count}
    loader = _loader(config, train_records, **kw)
    reference = _take(loader, 3)
    state = loader.get_state()
    reference += _take(loader, 5)
    with _loader(config, train_records, num_workers=2, **kw) as loader:
        _assert_same(reference, _take(loader, 8))
    with _loader(config, train_records, num_workers=2, **kw) as loader:
        loader.set_state(state)
        _assert_same(reference[3:], _take(loader, 5))


def test_plan_gives_any_batch_again(train_records):
    # Reader processes keep only the last few planned batches; an older one is replanned.
    stream = L._Stream(_config(), train_records, seed=0)
    plan = L._Plan(stream, 4)
    batches = [plan.batch(j) for j in range(3 * L._PLAN_WINDOW)]
    assert plan.batch(1) == batches[1] and plan.batch(20) == batches[20]
    later = L._Plan(stream, 4, plan.frontier())
    assert later.batch(3 * L._PLAN_WINDOW) == plan.batch(3 * L._PLAN_WINDOW)
    with pytest.raises(IndexError):
        later.batch(0)


@pytest.mark.parametrize("shard_count", [1, 2, 3])
def test_eval_covers_every_image_once(coco, shard_count):
    config = _config(*coco, test__ims_per_batch=3 * shard_count)
    records = L.dataset_records(config, "test")[0]
    per_host = [
        list(L.eval_batches(config, records, shard_index=s, shard_count=shard_count, num_workers=0))
        for s in range(shard_count)
    ]
    assert len({len(batches) for batches in per_host}) == 1  # hosts step together
    ids = []
    for step in zip(*per_host, strict=True):
        assert len({b["image"].shape for b in step}) == 1  # one padded shape per step
        for batch in step:
            assert batch["image"].shape[0] == 3
            valid = batch["example_valid"]
            assert (batch["image_id"][~valid] == -1).all()
            assert batch["image"][~valid].sum() == 0
            assert len(set(batch["bucket"][valid].tolist())) <= 1
            ids += batch["image_id"][valid].tolist()
    assert sorted(ids) == sorted(r["image_id"] for r in records)
    # The examples are make_test_example's.
    first = next(L.eval_batches(config, records, shard_index=0, shard_count=1, num_workers=0))
    i = [r["image_id"] for r in records].index(int(first["image_id"][0]))
    expected = L.B.make_test_example(records[i], config)
    np.testing.assert_array_equal(first["image"][0], expected["image"])


def test_eval_is_deterministic(coco):
    config = _config(*coco)
    records = load_coco_json(*coco)[0]
    a = list(L.eval_batches(config, records, shard_index=0, shard_count=1, num_workers=0))
    b = list(L.eval_batches(config, records, shard_index=0, shard_count=1, num_workers=0))
    _assert_same(a, b)


@pytest.mark.slow
def test_eval_workers_give_identical_batches(coco):
    config = _config(*coco, test__ims_per_batch=4)
    records = load_coco_json(*coco)[0]
    a = list(L.eval_batches(config, records, shard_index=0, shard_count=1, num_workers=0))
    b = list(L.eval_batches(config, records, shard_index=0, shard_count=1, num_workers=2))
    _assert_same(a, b)
