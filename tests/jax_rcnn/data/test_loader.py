"""TrainLoader / eval_batches: determinism, exact checkpoint restore, sharding, grouping."""

from __future__ import annotations

import json

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
    with pytest.raises(ValueError, match="batch_size"):
        _loader(_config(solver__ims_per_batch=4), train_records).set_state(state)


def test_batch_must_divide_between_hosts(train_records):
    with pytest.raises(ValueError, match="ims_per_batch"):
        _loader(_config(solver__ims_per_batch=3), train_records, shard_count=2)


def test_shards_are_disjoint_and_cover(train_records):
    config = _config(dataloader__aspect_ratio_grouping=False, solver__ims_per_batch=3)
    seen = []
    for shard in range(3):
        loader = _loader(config, train_records, shard_index=shard, shard_count=3)
        assert loader.batch_size == 1
        seen.append({int(b["image_id"][0]) for b in _take(loader, loader.shard_size)})
    assert sum(len(s) for s in seen) == len(train_records)
    assert set().union(*seen) == {r["image_id"] for r in train_records}


@pytest.mark.slow
def test_workers_give_identical_batches(train_records):
    config = _config()
    reference = _take(_loader(config, train_records), 8)
    with _loader(config, train_records, num_workers=2) as loader:
        _assert_same(reference, _take(loader, 8))


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
