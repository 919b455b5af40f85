"""load_coco_json / filter_for_training: Detectron2 semantics and clear errors on bad input."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from jax_rcnn.data.coco import BOX_MODE_XYXY_ABS, filter_for_training, load_coco_json

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data")


def _coco(images=None, annotations=None, categories=None):
    return {
        "images": images
        if images is not None
        else [
            {"id": 7, "file_name": "b.jpg", "height": 50, "width": 100},
            {"id": 3, "file_name": "a.jpg", "height": 40, "width": 60},
        ],
        "annotations": annotations if annotations is not None else [],
        "categories": categories
        if categories is not None
        else [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}, {"id": 9, "name": "nine"}],
    }


def _ann(i, image_id, cat, bbox, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **kw}


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_load_basic(tmp_path):
    poly = [[1.0, 1.0, 10.0, 1.0, 10.0, 10.0]]
    rle = {"size": [50, 100], "counts": "PPYo0"}
    anns = [
        _ann(1, 7, 9, [10, 5, 20, 10], segmentation=poly),
        _ann(2, 3, 2, [0, 0, 5, 5], iscrowd=1, segmentation=rle | {"size": [40, 60]}),
        _ann(3, 7, 5, [1.5, 2.5, 3, 4], segmentation=rle),
    ]
    records, meta = load_coco_json(_write(tmp_path, _coco(annotations=anns)), "/root")
    assert meta["thing_classes"] == ["two", "five", "nine"]
    assert meta["thing_dataset_id_to_contiguous_id"] == {2: 0, 5: 1, 9: 2}
    assert [r["image_id"] for r in records] == [3, 7]
    r3, r7 = records
    assert r3["file_name"] == os.path.join("/root", "a.jpg")
    assert (r3["height"], r3["width"]) == (40, 60)
    assert r3["annotations"][0]["iscrowd"] == 1 and r3["annotations"][0]["category_id"] == 0
    a = r7["annotations"][0]
    assert a["bbox"].dtype == np.float32 and a["bbox_mode"] == BOX_MODE_XYXY_ABS
    np.testing.assert_array_equal(a["bbox"], [10, 5, 30, 15])
    assert a["category_id"] == 2 and a["iscrowd"] == 0 and a["segmentation"] == poly
    np.testing.assert_array_equal(r7["annotations"][1]["bbox"], [1.5, 2.5, 4.5, 6.5])
    assert r7["annotations"][1]["segmentation"] == rle


def test_detectron2_fixture_annotations():
    path = os.path.join(DATA, "tiny_maskrcnn", "annotations.json")
    records, meta = load_coco_json(path, os.path.dirname(path))
    assert meta["thing_classes"] == ["person", "chair", "dining table", "bottle"]
    assert len(records) == 1 and len(records[0]["annotations"]) == 19
    with open(path) as f:
        raw = json.load(f)["annotations"]
    x, y, w, h = raw[0]["bbox"]
    np.testing.assert_array_equal(records[0]["annotations"][0]["bbox"], [x, y, x + w, y + h])


def test_missing_file_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_json(tmp_path / "missing.json", tmp_path)
    bad = _write(tmp_path, '{"images": [', "broken.json")
    with pytest.raises(ValueError, match="broken.json.*invalid JSON"):
        load_coco_json(bad, tmp_path)
    with pytest.raises(ValueError, match="list.json.*top level"):
        load_coco_json(_write(tmp_path, "[]", "list.json"), tmp_path)


def test_missing_required_fields(tmp_path):
    data = _coco()
    del data["images"][1]["height"]
    with pytest.raises(ValueError, match=r"ann.json.*images\[1\].*'height'"):
        load_coco_json(_write(tmp_path, data), tmp_path)
    data = _coco(annotations=[{"id": 1, "image_id": 7, "category_id": 5}])
    with pytest.raises(ValueError, match=r"annotations\[0\].*'bbox'"):
        load_coco_json(_write(tmp_path, data), tmp_path)
    data = _coco()
    del data["categories"]
    with pytest.raises(ValueError, match="'categories'"):
        load_coco_json(_write(tmp_path, data), tmp_path)
    data = _coco(annotations=[_ann(1, 7, 5, [1, 2, 3])])
    with pytest.raises(ValueError, match="'bbox' must be 4 finite numbers"):
        load_coco_json(_write(tmp_path, data), tmp_path)


def test_unknown_ids_and_duplicates(tmp_path):
    data = _coco(annotations=[_ann(11, 7, 4, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match=r"ann.json.*id 11.*unknown category id 4"):
        load_coco_json(_write(tmp_path, data), tmp_path)
    data = _coco(annotations=[_ann(1, 99, 5, [0, 0, 1, 1])])
    with pytest.raises(ValueError, match="unknown image id 99"):
        load_coco_json(_write(tmp_path, data), tmp_path)
    data = _coco(annotations=[_ann(1, 7, 5, [0, 0, 1, 1]), _ann(1, 7, 5, [0, 0, 2, 2])])
    with pytest.raises(ValueError, match="duplicate annotation id 1"):
        load_coco_json(_write(tmp_path, data), tmp_path)
    rle = {"size": [10, 10], "counts": "PPYo0"}
    data = _coco(annotations=[_ann(1, 7, 5, [0, 0, 1, 1], segmentation=rle)])
    with pytest.raises(ValueError, match=r"RLE size \[10, 10\] != image size \[50, 100\]"):
        load_coco_json(_write(tmp_path, data), tmp_path)


def test_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="ann.json.*no images"):
        load_coco_json(_write(tmp_path, _coco(images=[])), tmp_path)


def test_boxes_clipped_and_empty_dropped_with_counts(tmp_path, caplog):
    anns = [
        _ann(1, 7, 5, [-10, -5, 30, 20]),  # partly outside -> clipped to [0, 0, 20, 15]
        _ann(2, 7, 5, [120, 10, 5, 5]),  # entirely right of the 100-wide image -> dropped
        _ann(3, 7, 5, [10, 10, 0, 5]),  # zero width -> dropped
        _ann(4, 7, 5, [10, 10, 5, -3]),  # negative height -> dropped
        _ann(5, 7, 5, [90, 40, 20, 20]),  # clipped to [90, 40, 100, 50]
    ]
    with caplog.at_level(logging.INFO, logger="jax_rcnn.data.coco"):
        records, _ = load_coco_json(_write(tmp_path, _coco(annotations=anns)), tmp_path)
    boxes = [a["bbox"].tolist() for a in records[1]["annotations"]]
    assert boxes == [[0, 0, 20, 15], [90, 40, 100, 50]]
    assert "clipped 2 boxes" in caplog.text
    assert "dropped 3 instances whose box is empty" in caplog.text


def test_polygons_with_fewer_than_3_points(tmp_path, caplog):
    anns = [
        _ann(1, 7, 5, [0, 0, 5, 5], segmentation=[[0, 0, 5, 0]]),  # 2 points: instance dropped
        _ann(2, 7, 5, [0, 0, 5, 5], segmentation=[[0, 0, 5, 0], [0, 0, 5, 0, 5, 5]]),
        _ann(3, 7, 5, [0, 0, 5, 5], segmentation=[[0, 0, 5, 0, 5]]),  # odd length: dropped
    ]
    with caplog.at_level(logging.WARNING, logger="jax_rcnn.data.coco"):
        records, _ = load_coco_json(_write(tmp_path, _coco(annotations=anns)), tmp_path)
    kept = records[1]["annotations"]
    assert len(kept) == 1 and kept[0]["segmentation"] == [[0, 0, 5, 0, 5, 5]]
    assert "dropped 2 instances without a valid polygon" in caplog.text


def test_filter_for_training(tmp_path, caplog):
    anns = [_ann(1, 7, 5, [0, 0, 5, 5]), _ann(2, 7, 5, [0, 0, 5, 5], iscrowd=1)]
    anns.append(_ann(3, 3, 5, [0, 0, 5, 5], iscrowd=1))  # image 3: crowd only
    records, _ = load_coco_json(_write(tmp_path, _coco(annotations=anns)), tmp_path)
    with caplog.at_level(logging.INFO, logger="jax_rcnn.data.coco"):
        train = filter_for_training(records)
    assert [r["image_id"] for r in train] == [7]
    assert len(train[0]["annotations"]) == 1 and train[0]["annotations"][0]["iscrowd"] == 0
    assert len(records[1]["annotations"]) == 2  # input untouched
    assert "removed 2 crowd instances and 1 images without instances" in caplog.text
    assert [r["image_id"] for r in filter_for_training(records, filter_empty=False)] == [3, 7]
    only_crowd = [r for r in records if r["image_id"] == 3]
    with pytest.raises(ValueError, match="no training images"):
        filter_for_training(only_crowd)
