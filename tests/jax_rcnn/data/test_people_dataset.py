"""The built-in keypoint dataset (`people`): deterministic, COCO person-keypoint JSON that our
loader reads with COCO's metadata, visibilities consistent with the drawn figures."""

import json

import numpy as np
import pytest
from PIL import Image

from jax_rcnn.data import people
from jax_rcnn.data.coco import COCO_PERSON_KEYPOINT_NAMES, load_coco_json


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("people")
    return cache, people.ensure_people_dataset(cache, num_train=12, num_val=4)


def test_generated_once_and_deterministic(small, tmp_path):
    cache, paths = small
    assert people.ensure_people_dataset(cache, num_train=12, num_val=4) == paths
    again = people.ensure_people_dataset(tmp_path, num_train=12, num_val=4)
    assert json.loads(open(again["train_json"]).read()) == json.loads(
        open(paths["train_json"]).read()
    )


def test_loads_as_coco_person_keypoints(small):
    _, paths = small
    records, meta = load_coco_json(paths["train_json"], paths["train_images"])
    assert meta["keypoint_names"] == COCO_PERSON_KEYPOINT_NAMES
    assert meta["thing_classes"] == ["person"]
    assert len(records) == 12
    anns = [a for r in records for a in r["annotations"]]
    assert len(anns) >= 12 and all(a["keypoints"].shape == (17, 3) for a in anns)
    vis = np.concatenate([a["keypoints"][:, 2] for a in anns])
    assert {1.0, 2.0} <= set(vis.tolist())  # occluded and visible keypoints both occur


def test_visible_keypoints_lie_on_their_figure(small):
    """v = 2: the keypoint's pixel belongs to the figure's (visible) mask; v = 1: it does not
    (another figure covers it); v = 0: (0, 0, 0)."""
    import pycocotools.mask as mask_util

    _, paths = small
    coco = json.loads(open(paths["train_json"]).read())
    for a in coco["annotations"]:
        mask = mask_util.decode(a["segmentation"]).astype(bool)
        kps = np.asarray(a["keypoints"]).reshape(17, 3)
        for x, y, v in kps:
            if v == 2:
                assert mask[y, x]
            elif v == 1:
                assert not mask[y, x]
            else:
                assert x == 0 and y == 0
        assert a["num_keypoints"] == int((kps[:, 2] > 0).sum())
    image = Image.open(f"{paths['train_images']}/{coco['images'][0]['file_name']}")
    assert image.size == (160, 128)


def test_left_keypoints_are_on_the_image_right():
    """The figures face the camera: COCO's flip map and skeleton apply unchanged."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        kps = people.figure_keypoints(rng, 100.0)
        names = list(COCO_PERSON_KEYPOINT_NAMES)
        for part in ("eye", "ear", "shoulder", "hip"):
            assert kps[names.index(f"left_{part}"), 0] > kps[names.index(f"right_{part}"), 0]
