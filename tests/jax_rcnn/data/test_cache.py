"""`data.cache.generate_once`: written once, regenerated when stale or incomplete, nothing left
half-made; the built-in datasets keep the directory names their caches already have."""

from __future__ import annotations

import json
import os

import pytest

from jax_rcnn.data import cache, people, shapes

_BASE = {"version": 1, "image_size": [128, 160], "seed": 0}
# (generator, its arguments, directory and stamp.json the generator wrote before `cache.py`
# existed: read off the old code and off real caches), so caches written then are still found.
OLD_CACHES = [
    (
        shapes.ensure_shapes_dataset,
        {},
        "shapes_v1_0e7865cc8d5b",
        {**_BASE, "num_train": 1000, "num_val": 200, "max_instances": 12},
    ),
    (
        shapes.ensure_shapes_dataset,
        {"num_stuff_classes": 4},
        "shapes_v1_b237f6922dc4",
        {**_BASE, "num_train": 1000, "num_val": 200, "max_instances": 12, "num_stuff_classes": 4},
    ),
    (
        shapes.ensure_shapes_dataset,
        {"num_train": 1500, "num_val": 300, "num_classes": 6, "long_tail": True},
        "shapes_v1_6961547ee788",
        {**_BASE, "num_train": 1500, "num_val": 300, "max_instances": 12}
        | {"num_classes": 6, "long_tail": True},
    ),
    (
        shapes.ensure_shapes_dataset,
        {"num_train": 1500, "num_val": 16, "image_size_range": (256, 400), "num_classes": 6},
        "shapes_v1_7b361a29a66d",
        {**_BASE, "num_train": 1500, "num_val": 16, "max_instances": 12}
        | {"image_size_range": [256, 400], "num_classes": 6},
    ),
    (
        people.ensure_people_dataset,
        {},
        "people_v1_b0ffe6fd630f",
        {**_BASE, "num_train": 1000, "num_val": 200, "max_people": 4},
    ),
]


def _fake_dataset(root, params: dict) -> None:
    """A complete-looking dataset: stamp, placeholder JSON, empty image files."""
    root.mkdir()
    (root / "stamp.json").write_text(json.dumps(params))
    for split in ("train", "val"):
        (root / f"{split}.json").write_text("placeholder")
        (root / split).mkdir()
        for i in range(params[f"num_{split}"]):
            (root / split / f"{i:06d}.png").touch()
        if params.get("num_stuff_classes"):
            (root / f"{split}_sem").mkdir()
            (root / f"{split}_panoptic").mkdir()
            (root / f"{split}_panoptic.json").write_text("placeholder")


@pytest.mark.parametrize("ensure, kwargs, dirname, stamp", OLD_CACHES)
def test_existing_caches_are_found(ensure, kwargs, dirname, stamp, tmp_path):
    """A complete dataset in the old directory is returned as is, not regenerated."""
    assert cache.dataset_dir(tmp_path, dirname.split("_")[0], stamp) == str(tmp_path / dirname)
    _fake_dataset(tmp_path / dirname, stamp)
    paths = ensure(tmp_path, **kwargs)
    assert paths["train_json"] == str(tmp_path / dirname / "train.json")
    assert paths["val_images"] == str(tmp_path / dirname / "val")
    assert (tmp_path / dirname / "train.json").read_text() == "placeholder"  # not regenerated
    assert os.listdir(tmp_path) == [dirname]


def _layout(root: str) -> dict:
    return {"data": os.path.join(root, "data"), "index": os.path.join(root, "index.json")}


def _writer(calls: list):
    def write(out_dir: str) -> None:
        calls.append(out_dir)
        os.makedirs(os.path.join(out_dir, "data"))
        for i in range(3):
            open(os.path.join(out_dir, "data", f"{i}.txt"), "w").close()
        with open(os.path.join(out_dir, "index.json"), "w") as f:
            json.dump(len(calls), f)

    return write


def _generate(cache_dir, calls, params=None):
    params = params or {"version": 2, "n": 3}
    return cache.generate_once(
        cache_dir, "toy", params, layout=_layout, file_counts={"data": 3}, write=_writer(calls)
    )


def test_written_once_then_reused(tmp_path):
    calls = []
    paths = _generate(tmp_path, calls)
    root = tmp_path / f"toy_v2_{cache.params_digest({'version': 2, 'n': 3})}"
    assert paths == _layout(str(root))
    assert json.loads((root / "stamp.json").read_text()) == {"version": 2, "n": 3}
    assert _generate(tmp_path, calls) == paths
    assert len(calls) == 1 and not os.path.exists(calls[0])  # the temporary dir was renamed
    assert os.listdir(tmp_path) == [root.name]


def test_incomplete_or_stale_is_regenerated(tmp_path):
    calls = []
    paths = _generate(tmp_path, calls)
    os.remove(os.path.join(paths["data"], "1.txt"))  # one file short
    assert _generate(tmp_path, calls) == paths
    assert len(calls) == 2 and sorted(os.listdir(paths["data"])) == ["0.txt", "1.txt", "2.txt"]
    stamp = os.path.join(os.path.dirname(paths["index"]), "stamp.json")
    with open(stamp, "w") as f:
        f.write("{not json")
    assert _generate(tmp_path, calls) == paths
    assert len(calls) == 3 and json.load(open(paths["index"])) == 3
    other = _generate(tmp_path, calls, {"version": 2, "n": 4})
    assert other != paths and len(calls) == 4  # new parameters, new directory


def test_failed_write_leaves_nothing(tmp_path):
    def write(out_dir):
        open(os.path.join(out_dir, "half.txt"), "w").close()
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cache.generate_once(
            tmp_path, "toy", {"version": 1}, layout=_layout, file_counts={}, write=write
        )
    assert os.listdir(tmp_path) == []


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_RCNN_CACHE", str(tmp_path))
    assert cache.default_cache_dir() == str(tmp_path)
    assert cache.dataset_dir(None, "toy", {"version": 1}).startswith(str(tmp_path) + os.sep)
    assert shapes.default_cache_dir is cache.default_cache_dir  # the old import path works
