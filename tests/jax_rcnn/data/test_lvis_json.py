"""LVIS json -> records (Detectron2's load_lvis_json), builtin lvis_* names, long-tailed shapes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jax_rcnn.config import load_config
from jax_rcnn.data import loader as L
from jax_rcnn.data.coco import load_coco_json, load_lvis_json
from jax_rcnn.data.samplers import repeat_factors_from_category_frequency


def _lvis(tmp_path, **image_extra):
    gt = {
        "images": [
            {
                "id": 7,
                "height": 40,
                "width": 50,
                "coco_url": "http://images.cocodataset.org/train2017/000000000007.jpg",
                "neg_category_ids": [2],
                "not_exhaustive_category_ids": [1],
                **image_extra,
            },
            {
                "id": 3,
                "height": 20,
                "width": 30,
                "coco_url": "http://images.cocodataset.org/val2017/000000000003.jpg",
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": [1.0, 2.0, 10.0, 5.0],
                "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]],
                "area": 50.0,
            },
            {
                "id": 2,
                "image_id": 3,
                "category_id": 3,
                "bbox": [0.0, 0.0, 4.0, 4.0],
                "segmentation": [[0, 0, 4, 0, 4, 4]],
                "area": 8.0,
            },
        ],
        "categories": [
            {"id": k, "name": f"n{k}", "synonyms": [f"s{k}", "x"], "frequency": f, "image_count": c}
            for k, f, c in ((1, "f", 500), (2, "c", 50), (3, "r", 4))
        ],
    }
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(gt))
    return str(path)


def test_load_lvis_json_like_detectron2(tmp_path):
    records, meta = load_lvis_json(_lvis(tmp_path), "/data/coco")
    assert [r["image_id"] for r in records] == [3, 7]
    assert records[1]["file_name"] == os.path.join("/data/coco", "train2017/000000000007.jpg")
    assert records[0]["file_name"] == os.path.join("/data/coco", "val2017/000000000003.jpg")
    assert records[1]["neg_category_ids"] == [2]
    assert records[1]["not_exhaustive_category_ids"] == [1]
    assert records[0]["neg_category_ids"] == [] == records[0]["not_exhaustive_category_ids"]
    assert [a["category_id"] for a in records[1]["annotations"]] == [0]  # LVIS id - 1
    assert [a["category_id"] for a in records[0]["annotations"]] == [2]
    assert meta["thing_classes"] == ["s1", "s2", "s3"]  # first synonym, as Detectron2
    assert meta["class_image_count"].tolist() == [500, 50, 4]
    assert meta["frequency"] == ["f", "c", "r"]


def test_lvis_json_errors_name_the_image(tmp_path):
    with pytest.raises(ValueError, match=r"images\[0\] \(id 7\).*neg_category_ids"):
        load_lvis_json(_lvis(tmp_path, neg_category_ids=[9]), "/x")
    with pytest.raises(ValueError, match=r"images\[0\] \(id 7\).*not_exhaustive"):
        load_lvis_json(_lvis(tmp_path, not_exhaustive_category_ids=3), "/x")
    gt = json.loads(open(_lvis(tmp_path)).read())
    del gt["images"][1]["coco_url"]
    (tmp_path / "bad.json").write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=r"images\[1\] \(id 3\) needs 'coco_url' or 'file_name'"):
        load_lvis_json(tmp_path / "bad.json", "/x")
    # Read as COCO, an LVIS v1 json says what to set.
    with pytest.raises(ValueError, match="LVIS json.*config.data.format = 'lvis'"):
        load_coco_json(_lvis(tmp_path), "/x")


def test_lvis_builtin_name_and_format_key(monkeypatch, tmp_path):
    root = tmp_path / "d2"
    (root / "lvis").mkdir(parents=True)
    (root / "coco").mkdir()
    os.replace(_lvis(tmp_path), root / "lvis/lvis_v1_val.json")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    config = load_config("configs/faster_rcnn_R_50_FPN_1x.py")
    config.data.test.name = "lvis_v1_val"
    records, meta = L.dataset_records(config, "test")
    assert meta["format"] == "lvis" and len(records) == 2
    assert records[1]["file_name"] == os.path.join(str(root / "coco"), "train2017/000000000007.jpg")
    # Explicit paths: data.format says how to read them.
    config.data.test.name = ""
    config.data.test.json = str(root / "lvis/lvis_v1_val.json")
    config.data.test.images = str(root / "coco")
    with pytest.raises(ValueError, match="config.data.format = 'lvis'"):
        L.dataset_records(config, "test")
    config.data.format = "lvis"
    assert L.dataset_records(config, "test")[1]["format"] == "lvis"


def test_long_tailed_shapes_are_lvis(tmp_path):
    config = load_config("configs/quickstart.py:smoke")
    config.data.cache_dir = str(tmp_path)
    config.data.shapes.num_train, config.data.shapes.num_val = 120, 12
    config.data.shapes.long_tail = True
    records, meta = L.dataset_records(config, "train")
    assert meta["format"] == "lvis"
    n = config.data.shapes.num_classes
    counts = np.zeros(n, int)
    for r in records:
        for c in {a["category_id"] for a in r["annotations"]}:
            counts[c] += 1
    assert np.all(np.diff(counts[:4]) < 0)  # head classes ordered by frequency
    assert meta["class_image_count"][: len(counts)].sum() >= counts.sum()
    assert meta["frequency"][0] == "f"
    factors = repeat_factors_from_category_frequency(records, 0.2)
    assert factors.max() > 1.0  # the tail is repeated
    val, vmeta = L.dataset_records(config, "test")
    assert vmeta["format"] == "lvis" and "neg_category_ids" in val[0]
