"""Detectron2 builtin dataset names -> paths under $DETECTRON2_DATASETS."""

import json
import os

import pytest

from jax_rcnn.config import load_config
from jax_rcnn.data import builtin
from jax_rcnn.data.loader import coco_paths, dataset_records


def test_builtin_names_resolve_like_detectron2(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    paths = builtin.resolve("coco_2017_train", "config.data.train")
    assert paths == {
        "json": str(tmp_path / "coco/annotations/instances_train2017.json"),
        "images": str(tmp_path / "coco/train2017"),
        "format": "coco",
    }
    assert builtin.resolve("lvis_v1_val", "k") == {
        "json": str(tmp_path / "lvis/lvis_v1_val.json"),
        "images": str(tmp_path / "coco"),
        "format": "lvis",
    }
    assert builtin.resolve("coco_2014_minival", "k")["json"].endswith(
        "coco/annotations/instances_minival2014.json"
    )


def test_default_root_is_datasets_in_the_working_directory(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert builtin.resolve("coco_2017_val", "k")["images"] == os.path.join(
        "datasets", "coco/val2017"
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("keypoints_coco_2017_train", "keypoint"),
        ("lvis_v1_test_dev", "no annotations"),
        ("coco_2017_train_panoptic", "panoptic_separated"),
        ("coco_2017_val_panoptic_stuffonly", "panoptic_separated"),
        ("coco_2017_test-dev", "no annotations"),
    ],
)
def test_builtin_names_of_unsupported_tasks_are_clear_errors(name, why):
    with pytest.raises(ValueError, match=why) as info:
        builtin.resolve(name, "config.data.train")
    assert "config.data.train.json" in str(info.value)


def test_other_names_need_the_paths(monkeypatch):
    config = load_config("configs/faster_rcnn_R_50_FPN_1x.py")
    config.data.train.name = "my_dataset_train"
    with pytest.raises(ValueError, match=r"config\.data\.train\.json and config\.data\.train"):
        coco_paths(config, "train")
    config.data.train.name = ""
    with pytest.raises(ValueError, match=r"config\.data\.train\.json is empty"):
        coco_paths(config, "train")


def test_builtin_name_loads_records_from_the_standard_layout(monkeypatch, tmp_path):
    root = tmp_path / "d2"
    (root / "coco/annotations").mkdir(parents=True)
    (root / "coco/val2017").mkdir()
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 6}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "coco/annotations/instances_val2017.json").write_text(json.dumps(gt))
    config = load_config("configs/faster_rcnn_R_50_FPN_1x.py")
    config.data.test.name = "coco_2017_val"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="coco_2017_val.*DETECTRON2_DATASETS"):
        dataset_records(config, "test")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    records, meta = dataset_records(config, "test")
    assert [r["image_id"] for r in records] == [1]
    assert meta["json_file"] == str(root / "coco/annotations/instances_val2017.json")
    # Explicit paths win over the name.
    config.data.test.json = str(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match=r"config\.data\.test\.json"):
        dataset_records(config, "test")


def test_panoptic_separated_names_resolve_like_detectron2(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    paths = builtin.resolve("coco_2017_val_panoptic_separated", "config.data.test")
    assert paths == {
        "json": str(tmp_path / "coco/annotations/instances_val2017.json"),
        "images": str(tmp_path / "coco/val2017"),
        "sem_seg": str(tmp_path / "coco/panoptic_stuff_val2017"),
        "panoptic_json": str(tmp_path / "coco/annotations/panoptic_val2017.json"),
        "panoptic_png": str(tmp_path / "coco/panoptic_val2017"),
        "format": "coco",
    }
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for d in ("val2017", "panoptic_stuff_val2017", "panoptic_val2017"):
        (root / d).mkdir()
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 6}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations/instances_val2017.json").write_text(json.dumps(gt))
    (root / "annotations/panoptic_val2017.json").write_text("{}")
    config = load_config("configs/panoptic_fpn_R_50_1x.py")
    config.data.test.name = "coco_2017_val_panoptic_separated"
    records, meta = dataset_records(config, "test")
    assert records[0]["sem_seg_file_name"] == str(root / "panoptic_stuff_val2017" / "a.png")
    assert meta["panoptic_json"] == paths["panoptic_json"]
