"""Training samplers: Detectron2's repeat factors, repeat-factor epochs, and the loader on them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from configs import common
from jax_rcnn.data import loader as L
from jax_rcnn.data import samplers as S


def _records(cats_per_image):
    return [
        {"image_id": i, "annotations": [{"category_id": c} for c in cats]}
        for i, cats in enumerate(cats_per_image)
    ]


def _reference_factors(cats_per_image, t, sqrt):
    # Direct re-computation of the LVIS paper's formula (appendix B.2), image by image.
    n = len(cats_per_image)
    out = []
    for cats in cats_per_image:
        r = 1.0
        for c in set(cats):
            f = sum(c in set(other) for other in cats_per_image) / n
            r = max(r, math.sqrt(t / f) if sqrt else t / f)
        out.append(r)
    return np.array(out, np.float32)


@pytest.mark.parametrize("sqrt", [True, False])
def test_repeat_factors_match_the_formula(sqrt):
    rng = np.random.default_rng(0)
    # 40 images: category 0 everywhere, 1 in half, 2..5 rare, some images empty.
    cats = []
    for i in range(40):
        c = [0] if i % 7 else []
        c += [1] * (i % 2) + ([int(rng.integers(2, 6))] if i % 9 == 0 else [])
        c += [1] if i == 3 else []  # a duplicate category in one image counts once
        cats.append(c)
    got = S.repeat_factors_from_category_frequency(_records(cats), 0.3, sqrt)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_factors(cats, 0.3, sqrt), rtol=1e-6)
    assert got[np.array([len(c) == 0 for c in cats])].tolist() == [1.0] * sum(
        len(c) == 0 for c in cats
    )


def test_repeat_factors_worked_example():
    cats = [[7]] + [[1]] * 9  # category 7 in 1 of 10 images: f = 0.1
    got = S.repeat_factors_from_category_frequency(_records(cats), 0.4, True)
    np.testing.assert_allclose(got, [2.0] + [1.0] * 9)
    with pytest.raises(ValueError, match="repeat_thresh"):
        S.repeat_factors_from_category_frequency(_records(cats), 0.0)


def test_repeat_factor_epochs():
    factors = np.array([1.0, 2.0, 2.5, 1.25, 3.0], np.float32)
    order = S.RepeatFactorOrder(factors, seed=5)
    counts, starts = [], [0]
    for e in range(400):
        indices, copies = order.epoch_indices(e)
        c = np.bincount(indices, minlength=5)
        assert np.all(c >= np.floor(factors)) and np.all(c <= np.ceil(factors))
        for r in range(5):  # copies number a record's appearances 0, 1, ...
            assert sorted(copies[indices == r].tolist()) == list(range(c[r]))
        counts.append(c)
        starts.append(starts[-1] + len(indices))
    np.testing.assert_allclose(np.mean(counts, axis=0), factors, atol=0.08)  # in expectation
    assert len(set(np.diff(starts).tolist())) > 1  # epoch lengths vary
    # Random access by stream position, in any order, after any restart.
    fresh = S.RepeatFactorOrder(factors, seed=5)
    for p in (starts[3] + 2, 0, starts[3] - 1, starts[3], starts[1] + 1):
        e = int(np.searchsorted(starts, p, side="right")) - 1
        indices, copies = order.epoch_indices(e)
        j = p - starts[e]
        assert fresh.record(p) == (int(indices[j]), e, int(copies[j]))
        assert fresh.epoch(p) == e
    other = S.RepeatFactorOrder(factors, seed=6)
    assert not np.array_equal(other.epoch_indices(0)[0], order.epoch_indices(0)[0])


def test_all_ones_visit_every_record_once_per_epoch():
    order = S.RepeatFactorOrder(np.ones(9, np.float32), seed=0)
    seen = [order.record(p) for p in range(27)]
    for e in range(3):
        assert sorted(r for r, epoch, _ in seen[9 * e : 9 * e + 9]) == list(range(9))
        assert {epoch for _, epoch, _ in seen[9 * e : 9 * e + 9]} == {e}


# --- the loader with the repeat-factor sampler ------------------------------------------------


@pytest.fixture(scope="module")
def rfs_setup(tmp_path_factory):
    from tests.jax_rcnn.data.test_loader import _config, _write_coco

    coco = _write_coco(tmp_path_factory.mktemp("coco_rfs"), 23)
    config = _config(*coco)
    records = L.dataset_records(config, "train")[0]
    # Make category 2 rare: it stays in the first image only (elsewhere it becomes 0).
    for k, r in enumerate(records):
        for a in r["annotations"]:
            if a["category_id"] == 2 and k:
                a["category_id"] = 0
    records[0]["annotations"][0]["category_id"] = 2
    config.dataloader.sampler_train = "RepeatFactorTrainingSampler"
    config.dataloader.repeat_threshold = 0.5
    return config, records


def _loader(config, records, **kw):
    return L.TrainLoader(config, records, shard_index=0, shard_count=1, num_workers=0, **kw)


def test_loader_repeats_rare_images_and_augments_each_copy(rfs_setup):
    config, records = rfs_setup
    config = config.copy_and_resolve_references()
    config.dataloader.aspect_ratio_grouping = False
    config.solver.ims_per_batch = 1
    factors = S.repeat_factors_from_category_frequency(records, 0.5)
    rare = int(np.argmax(factors))
    assert factors[rare] >= 2  # the single image with category 2 is repeated
    loader = _loader(config, records)
    order = loader._stream.order
    n0 = len(order.epoch_indices(0)[0])
    assert n0 > len(records)
    batches = [next(loader) for _ in range(n0)]
    ids = [int(b["image_id"][0]) for b in batches]
    copies = [b for b, i in zip(batches, ids, strict=True) if i == records[rare]["image_id"]]
    assert len(copies) == int(np.sum(order.epoch_indices(0)[0] == rare)) >= 2
    # Each appearance has its own augmentation draw (flip / size), not the same example twice.
    assert any(not np.array_equal(copies[0]["gt_boxes"], c["gt_boxes"]) for c in copies[1:]) or any(
        copies[0]["image"].shape != c["image"].shape for c in copies[1:]
    )
    assert loader.epoch == 1


@pytest.mark.parametrize("restore_after", [5, 17])
def test_loader_restores_exactly_with_repeat_factors(rfs_setup, restore_after):
    from tests.jax_rcnn.data.test_loader import _assert_same

    config, records = rfs_setup
    full = _loader(config, records)
    reference = [next(full) for _ in range(restore_after + 5)]
    loader = _loader(config, records)
    for _ in range(restore_after):
        next(loader)
    state = json.loads(json.dumps(loader.get_state()))
    assert state["sampler"].startswith("RepeatFactorTrainingSampler(threshold=0.5")
    restored = _loader(config, records)
    restored.set_state(state)
    _assert_same(reference[restore_after:], [next(restored) for _ in range(5)])


def test_state_of_another_sampler_is_refused(rfs_setup):
    config, records = rfs_setup
    state = _loader(config, records).get_state()
    plain = config.copy_and_resolve_references()
    plain.dataloader.sampler_train = "TrainingSampler"
    with pytest.raises(ValueError, match="sampler"):
        _loader(plain, records).set_state(state)
    legacy = _loader(plain, records).get_state()
    del legacy["sampler"]  # a state written before the sampler key: TrainingSampler
    _loader(plain, records).set_state(legacy)
    with pytest.raises(ValueError, match="sampler"):
        _loader(config, records).set_state(legacy)


def test_common_config_defaults_are_detectron2s():
    dl = common.dataloader()
    assert (dl.sampler_train, dl.repeat_threshold, dl.repeat_sqrt) == (
        "TrainingSampler",
        0.0,
        True,
    )
