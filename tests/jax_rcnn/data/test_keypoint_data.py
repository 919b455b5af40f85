"""COCO person keypoints on the host: loading (+0.5, validation, metadata), resize/flip with the
flip map, training examples, the MIN_KEYPOINTS_PER_IMAGE filter."""

import copy
import json
import pathlib

import numpy as np
import pytest

from jax_rcnn.data import batching
from jax_rcnn.data import transforms as T
from jax_rcnn.data.coco import (
    COCO_PERSON_KEYPOINT_NAMES,
    filter_images_with_few_keypoints,
    keypoint_hflip_indices,
    load_coco_json,
)
from jax_rcnn.data.transforms import resize_shortest_edge_shape

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_keypoint_rcnn"
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


@pytest.fixture(scope="module")
def fixture_json():
    return json.loads((DATA / "annotations.json").read_text())


def _write(tmp_path, data):
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps(data))
    return path


def test_load_adds_half_a_pixel_and_coco_metadata(tmp_path, fixture_json):
    records, meta = load_coco_json(_write(tmp_path, fixture_json), tmp_path)
    assert meta["keypoint_names"] == COCO_PERSON_KEYPOINT_NAMES
    assert list(meta["keypoint_hflip_indices"]) == COCO_FLIP
    assert records[0]["keypoint_hflip_indices"] == meta["keypoint_hflip_indices"]
    assert len(meta["keypoint_skeleton"]) == 19 and meta["keypoint_skeleton"][0] == (16, 14)
    raw = np.asarray(fixture_json["annotations"][0]["keypoints"], np.float32).reshape(17, 3)
    ours = records[0]["annotations"][0]["keypoints"]
    np.testing.assert_array_equal(ours[:, :2], raw[:, :2] + 0.5)
    np.testing.assert_array_equal(ours[:, 2], raw[:, 2])


def test_load_and_resize_equal_detectron2_mapper_keypoints(tmp_path, fixture_json):
    """Detectron2's DatasetMapper output on the fixture photo (600-pixel short side, no flip)."""
    want = np.load(DATA / "training.npz")["img0_gt_keypoints"]
    records, _ = load_coco_json(_write(tmp_path, fixture_json), tmp_path)
    r = records[0]
    nh, nw = resize_shortest_edge_shape(r["height"], r["width"], 600, 1000)
    kps = np.stack([a["keypoints"] for a in r["annotations"]])
    ours = T.transform_keypoints(kps, nw / r["width"], nh / r["height"], (nh, nw))
    np.testing.assert_allclose(ours, want, atol=1e-4)


def test_flip_swaps_left_and_right_on_a_hand_made_person():
    """A 100-pixel-wide image: the left eye at x=30 and the right eye at x=70 (v=2), the left
    wrist labelled (v=1), the right wrist not labelled. After the flip the left eye is the old
    right eye mirrored (x = 100 - 70 = 30), and so on; nose stays, mirrored."""
    kps = np.zeros((1, 17, 3), np.float32)
    names = list(COCO_PERSON_KEYPOINT_NAMES)
    kps[0, names.index("nose")] = (50.5, 10.5, 2)
    kps[0, names.index("left_eye")] = (30.5, 8.5, 2)
    kps[0, names.index("right_eye")] = (70.5, 8.5, 2)
    kps[0, names.index("left_wrist")] = (10.5, 60.5, 1)
    out = T.transform_keypoints(kps, 1.0, 1.0, (100, 100), True, COCO_FLIP)[0]
    np.testing.assert_allclose(out[names.index("nose")], (49.5, 10.5, 2))
    np.testing.assert_allclose(out[names.index("left_eye")], (29.5, 8.5, 2))
    np.testing.assert_allclose(out[names.index("right_eye")], (69.5, 8.5, 2))
    np.testing.assert_allclose(out[names.index("right_wrist")], (89.5, 60.5, 1))
    np.testing.assert_array_equal(out[names.index("left_wrist")], (0, 0, 0))
    np.testing.assert_array_equal(out[names.index("left_ankle")], (0, 0, 0))


def test_points_outside_the_image_become_unlabeled():
    kps = np.array([[[5.0, 5.0, 2], [11.0, 5.0, 2], [10.0, 10.0, 1]]], np.float32)
    out = T.transform_keypoints(kps, 1.0, 1.0, (10, 10))[0]
    np.testing.assert_array_equal(out, [[5, 5, 2], [0, 0, 0], [10, 10, 1]])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][2].update(keypoints=[1, 2, 2] * 16), "48 keypoint values"),
        (
            lambda d: d["annotations"][2].update(keypoints=[1, 2, 2] * 16 + [3, 4, 3]),
            "keypoint 16 has visibility 3",
        ),
        (
            lambda d: d["categories"][0].update(
                keypoint_flip_map=[["left_eye", "right_eye"], ["left_eye", "left_ear"]]
            ),
            "not a permutation",
        ),
        (
            lambda d: d["categories"][0].update(keypoint_flip_map=[["left_eye", "third_eye"]]),
            "third_eye",
        ),
    ],
    ids=["wrong_length", "visibility", "flip_map_duplicate", "flip_map_unknown"],
)
def test_bad_keypoints_name_the_file_and_annotation(tmp_path, fixture_json, edit, message):
    data = copy.deepcopy(fixture_json)
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as info:
        load_coco_json(path, tmp_path)
    assert str(path) in str(info.value)
    if "keypoint values" in message or "visibility" in message:
        assert f"(id {data['annotations'][2]['id']})" in str(info.value)


def test_flip_indices_pair_left_and_right_names():
    assert keypoint_hflip_indices(("a", "left_x", "right_x"), [("left_x", "right_x")]) == (0, 2, 1)


def test_few_keypoints_filter(tmp_path, fixture_json):
    records, _ = load_coco_json(_write(tmp_path, fixture_json), tmp_path)
    visible = sum(int((a["keypoints"][:, 2] > 0).sum()) for a in records[0]["annotations"])
    assert filter_images_with_few_keypoints(records, visible) == records
    with pytest.raises(ValueError, match="visible keypoints"):
        filter_images_with_few_keypoints(records, visible + 1)


def test_train_example_holds_transformed_keypoints(tmp_path, fixture_json):
    """`make_train_example` with a keypoint config: gt_keypoints f32[G, 17, 3], flipped with
    the record's flip indices when the draw flips."""
    from PIL import Image

    from jax_rcnn.config import load_config

    config = load_config("configs/keypoint_rcnn_R_50_FPN_1x.py:smoke")
    Image.new("RGB", (500, 375), (90, 120, 150)).save(tmp_path / "image.jpg")
    records, _ = load_coco_json(_write(tmp_path, fixture_json), tmp_path)
    seen = set()
    for seed in range(8):
        ex = batching.make_train_example(records[0], config, np.random.default_rng(seed))
        g = int(ex["gt_valid"].sum())
        assert ex["gt_keypoints"].shape == (config.input.max_gt, 17, 3)
        nh, nw = (int(v) for v in ex["image_size"])
        kps = np.stack([a["keypoints"] for a in records[0]["annotations"]])
        plain = T.transform_keypoints(kps, nw / 500, nh / 375, (nh, nw))
        flipped = T.transform_keypoints(kps, nw / 500, nh / 375, (nh, nw), True, COCO_FLIP)
        box_x0 = ex["gt_boxes"][0, 0]
        is_flipped = not np.isclose(box_x0, records[0]["annotations"][0]["bbox"][0] * nw / 500)
        seen.add(is_flipped)
        np.testing.assert_allclose(ex["gt_keypoints"][:g], flipped if is_flipped else plain)
    assert seen == {True, False}
