"""The synthetic `shapes` dataset: deterministic, valid COCO, masks consistent with boxes."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from pycocotools.coco import COCO

from configs import common
from jax_rcnn.data import batching as B
from jax_rcnn.data import shapes
from jax_rcnn.data.coco import filter_for_training, load_coco_json

SMALL = {"num_train": 40, "num_val": 10, "image_size": (64, 80)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return shapes.ensure_shapes_dataset(tmp_path_factory.mktemp("shapes"), **SMALL)


def _tree_bytes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def test_deterministic(dataset, tmp_path):
    again = shapes.ensure_shapes_dataset(tmp_path, **SMALL)
    root_a = os.path.dirname(dataset["train_json"])
    root_b = os.path.dirname(again["train_json"])
    assert os.path.basename(root_a) == os.path.basename(root_b)
    assert _tree_bytes(root_a) == _tree_bytes(root_b)


def test_cached_and_regenerated(dataset, tmp_path):
    paths = shapes.ensure_shapes_dataset(tmp_path, **SMALL)
    stamp = os.path.join(os.path.dirname(paths["train_json"]), "stamp.json")
    mtime = os.path.getmtime(stamp)
    assert shapes.ensure_shapes_dataset(tmp_path, **SMALL) == paths
    assert os.path.getmtime(stamp) == mtime  # reused, not regenerated
    os.remove(os.path.join(paths["val_images"], "000003.png"))  # incomplete -> regenerated
    assert shapes.ensure_shapes_dataset(tmp_path, **SMALL) == paths
    assert os.path.exists(os.path.join(paths["val_images"], "000003.png"))
    other = shapes.ensure_shapes_dataset(tmp_path, **(SMALL | {"seed": 1}))
    assert other["train_json"] != paths["train_json"]  # new parameters, new directory
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".shapes-tmp")]


def test_valid_coco_and_masks_match_boxes(dataset):
    for split in ("train", "val"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(dataset[f"{split}_json"])
        assert len(coco.getImgIds()) == SMALL[f"num_{split}"]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(shapes.CLASS_NAMES)
        for ann in coco.loadAnns(coco.getAnnIds()):
            mask = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert ann["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]
            assert ann["area"] == mask.sum()
            np.testing.assert_array_equal(mask_util.toBbox(ann["segmentation"]), ann["bbox"])


def test_content(dataset):
    records, meta = load_coco_json(dataset["train_json"], dataset["train_images"])
    assert meta["thing_classes"] == list(shapes.CLASS_NAMES) and len(shapes.CLASS_NAMES) >= 6
    counts = [len(r["annotations"]) for r in records]
    assert 0 in counts  # some empty images
    assert max(counts) <= 12 and np.mean(counts) > 2
    classes = {a["category_id"] for r in records for a in r["annotations"]}
    assert len(classes) >= 6
    with open(dataset["val_json"]) as f:
        val = json.load(f)
    with open(dataset["train_json"]) as f:
        train = json.load(f)
    assert val["annotations"][:3] != train["annotations"][:3]  # different seeds per split


def test_trainable_with_smoke_config(dataset):
    config = common.base_config(mask_on=True)
    common.smoke(config)
    config.input.max_gt = 16
    records, _ = load_coco_json(dataset["train_json"], dataset["train_images"])
    records = filter_for_training(records)
    rng = np.random.default_rng(0)
    batch = B.collate([B.make_train_example(r, config, rng) for r in records[:2]])
    assert batch["image"].shape[0] == 2 and batch["gt_masks"].shape == (2, 16, 32, 32)
    assert batch["gt_valid"].any(axis=1).all()


def test_variable_sizes_and_fewer_classes(tmp_path):
    """`image_size_range` draws each side in [lo, hi]; `num_classes` keeps the first N classes;
    the default parameters keep their directory (the quickstart's dataset is reused)."""
    paths = shapes.ensure_shapes_dataset(
        tmp_path, **(SMALL | {"image_size_range": (40, 64), "num_classes": 3})
    )
    with open(paths["train_json"]) as f:
        coco = json.load(f)
    sizes = {(im["height"], im["width"]) for im in coco["images"]}
    assert len(sizes) > 1 and all(40 <= h <= 64 and 40 <= w <= 64 for h, w in sizes)
    assert [c["name"] for c in coco["categories"]] == list(shapes.CLASS_NAMES[:3])
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2, 3}
    for im in coco["images"][:3]:
        with Image.open(os.path.join(paths["train_images"], im["file_name"])) as img:
            assert img.size == (im["width"], im["height"])
    default = shapes.ensure_shapes_dataset(tmp_path, **SMALL)
    assert default != paths
    assert shapes.ensure_shapes_dataset(tmp_path, **(SMALL | {"num_classes": 8})) == default
    with pytest.raises(ValueError, match="num_classes"):
        shapes.ensure_shapes_dataset(tmp_path, **(SMALL | {"num_classes": 9}))
