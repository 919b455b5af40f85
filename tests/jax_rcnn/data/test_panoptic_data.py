"""Semantic / panoptic ground truth: the mapper's semantic targets against Detectron2's fixture,
COCO panoptic and `panoptic_separated` loading, and the bad-input errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import common
from jax_rcnn.config import from_detectron2
from jax_rcnn.data import batching as B
from jax_rcnn.data import panoptic as P
from jax_rcnn.data.coco import load_coco_json

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data")
TINY = os.path.join(DATA, "tiny_maskrcnn")
PANOPTIC = os.path.join(DATA, "tiny_panoptic_fpn")


def test_train_example_semantic_target_is_detectron2s():
    """The fixture photo with its `sem_seg.png` through our mapper: Detectron2's padded targets
    (NEAREST resize 375x500 -> 600x800, 255 padding to 608x800), bit for bit."""
    config = from_detectron2(os.path.join(PANOPTIC, "config.yaml"))
    records, _ = load_coco_json(os.path.join(TINY, "annotations.json"), TINY)
    record = P.attach_sem_seg(records, PANOPTIC)[0]
    assert record["sem_seg_file_name"].endswith("tiny_panoptic_fpn/image.png")
    record["sem_seg_file_name"] = os.path.join(PANOPTIC, "sem_seg.png")
    with config.unlocked():
        config.input.random_flip = "none"
    ex = B.make_train_example(record, config, np.random.default_rng(0))
    want = np.load(os.path.join(PANOPTIC, "training.npz"))["sem_gt_padded"][0]
    np.testing.assert_array_equal(ex["sem_seg"], want)


def _write_png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def _small_config():
    config = common.base_config(meta_architecture="PanopticFPN")
    config.input.min_size_train = (8,)
    config.input.max_size_train = 100
    config.input.buckets = ((16, 32),)
    return config


def test_semantic_target_flips_with_the_image_and_pads_with_255(tmp_path):
    image = np.zeros((8, 12, 3), np.uint8)
    image[:, :4] = 200  # bright left third
    sem = np.full((8, 12), 3, np.uint8)
    sem[:, :4] = 1
    record = {
        "file_name": _write_png(tmp_path / "a.png", image),
        "sem_seg_file_name": _write_png(tmp_path / "a_sem.png", sem),
        "height": 8,
        "width": 12,
        "image_id": 1,
        "annotations": [],
    }
    config = _small_config()
    flips = set()
    for seed in range(8):
        ex = B.make_train_example(record, config, np.random.default_rng(seed))
        assert ex["sem_seg"].shape == (16, 32)
        assert np.all(ex["sem_seg"][8:] == 255) and np.all(ex["sem_seg"][:, 12:] == 255)
        inside = ex["sem_seg"][:8, :12]
        bright = ex["image"][:8, :12, 0] == 200
        np.testing.assert_array_equal(inside == 1, bright)
        flips.add(bool(bright[0, -1]))
    assert flips == {True, False}
    batch = B.collate([ex], batch_size=2)
    assert np.all(batch["sem_seg"][1] == 255)


def test_semantic_png_of_the_wrong_size_names_the_file(tmp_path):
    record = {
        "file_name": _write_png(tmp_path / "a.png", np.zeros((8, 12, 3), np.uint8)),
        "sem_seg_file_name": _write_png(tmp_path / "wrong.png", np.zeros((8, 10), np.uint8)),
        "height": 8,
        "width": 12,
        "image_id": 1,
        "annotations": [],
    }
    with pytest.raises(ValueError, match=r"wrong\.png: semantic PNG is 8x10 .* image is 8x12"):
        B.make_train_example(record, _small_config(), np.random.default_rng(0))


CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1},
    {"id": 7, "name": "sky", "isthing": 0},
    {"id": 3, "name": "grass", "isthing": 0},
]


def _panoptic_files(tmp_path, segments, ids, categories=CATEGORIES):
    (tmp_path / "pan").mkdir()
    _write_png(tmp_path / "pan" / "a.png", P.id2rgb(ids))
    data = {
        "images": [{"id": 4, "file_name": "a.jpg", "height": 4, "width": 4}],
        "annotations": [{"image_id": 4, "file_name": "a.png", "segments_info": segments}],
        "categories": categories,
    }
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path / "pan")


IDS = np.array([[0, 300, 300, 9], [0, 300, 300, 9], [12, 12, 12, 12], [12, 12, 12, 12]])
SEGMENTS = [
    {"id": 300, "category_id": 1, "iscrowd": 0, "area": 4, "bbox": [1, 0, 2, 2]},
    {"id": 9, "category_id": 1, "iscrowd": 1, "area": 2, "bbox": [3, 0, 1, 2]},
    {"id": 12, "category_id": 7, "iscrowd": 0, "area": 8, "bbox": [0, 2, 4, 2]},
]


def test_coco_panoptic_records_and_separated_semantic_map(tmp_path):
    json_file, png_root = _panoptic_files(tmp_path, SEGMENTS, IDS)
    records, meta = P.load_coco_panoptic_json(json_file, tmp_path, png_root)
    assert meta["stuff_classes"] == ["things", "grass", "sky"]
    assert meta["stuff_dataset_id_to_contiguous_id"] == {3: 1, 7: 2}
    (r,) = records
    assert [(s["category_id"], s["isthing"]) for s in r["segments_info"]] == [
        (0, True),
        (0, True),
        (2, False),
    ]
    ids = P.read_panoptic_png(r["pan_seg_file_name"], r["segments_info"])
    np.testing.assert_array_equal(ids, IDS)
    # things (the crowd too) -> 0, sky -> 2, unlabelled -> 255
    want = np.array([[255, 0, 0, 0], [255, 0, 0, 0], [2] * 4, [2] * 4])
    np.testing.assert_array_equal(P.panoptic_to_semantic(ids, r["segments_info"]), want)


def test_panoptic_png_segment_missing_from_json_names_the_file(tmp_path):
    json_file, png_root = _panoptic_files(tmp_path, SEGMENTS[:2], IDS)
    records, _ = P.load_coco_panoptic_json(json_file, tmp_path, png_root)
    with pytest.raises(ValueError, match=r"a\.png: segment ids \[12\] are in the PNG but not"):
        P.read_panoptic_png(records[0]["pan_seg_file_name"], records[0]["segments_info"])


def test_category_both_thing_and_stuff_names_the_file(tmp_path):
    cats = [*CATEGORIES, {"id": 1, "name": "circle", "isthing": 0}]
    json_file, png_root = _panoptic_files(tmp_path, SEGMENTS, IDS, cats)
    with pytest.raises(ValueError, match=r"panoptic\.json: category 1 \(circle\) is marked both"):
        P.load_coco_panoptic_json(json_file, tmp_path, png_root)


def test_builtin_panoptic_shapes_annotations_agree(tmp_path):
    """The panoptic shapes variant: semantic PNG == its panoptic PNG's things-0/stuff map, every
    instance of the instances JSON is exactly one thing segment, stuff from the 4 textures."""
    import pycocotools.mask as mask_util

    from jax_rcnn.data.shapes import STUFF_NAMES, ensure_shapes_dataset

    paths = ensure_shapes_dataset(tmp_path, num_train=2, num_val=4, num_stuff_classes=4)
    records, meta = P.load_coco_panoptic_json(
        paths["val_panoptic_json"], paths["val_images"], paths["val_panoptic_png"]
    )
    assert meta["stuff_classes"] == ["things", *STUFF_NAMES]
    instances, _ = load_coco_json(paths["val_json"], paths["val_images"])
    for rec, inst in zip(records, instances, strict=True):
        ids = P.read_panoptic_png(rec["pan_seg_file_name"], rec["segments_info"])
        assert np.all(ids > 0)  # no void: every pixel is a thing or stuff
        sem = P.read_semantic(
            os.path.join(paths["val_sem_seg"], os.path.basename(rec["file_name"])),
            rec["height"],
            rec["width"],
        )
        np.testing.assert_array_equal(sem, P.panoptic_to_semantic(ids, rec["segments_info"]))
        things = [s for s in rec["segments_info"] if s["isthing"]]
        assert len(things) == len(inst["annotations"])
        for s, a in zip(things, inst["annotations"], strict=True):
            mask = mask_util.decode(a["segmentation"]).astype(bool)
            np.testing.assert_array_equal(ids == s["id"], mask)
