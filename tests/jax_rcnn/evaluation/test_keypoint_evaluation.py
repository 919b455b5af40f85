"""COCO keypoint AP (OKS) through pycocotools: the -0.5 / +0.5 conventions round-trip, the
evaluator's keypoints task, and the keypoint-count check."""

import pathlib

import numpy as np
import pytest

from jax_rcnn.data.coco import load_coco_json
from jax_rcnn.evaluation import COCOEvaluator
from jax_rcnn.evaluation.coco_evaluation import evaluate_coco_results, load_coco

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_keypoint_rcnn"
GT = str(DATA / "annotations.json")


@pytest.fixture(scope="module")
def gt_as_predictions():
    """The loaded gt (keypoints + 0.5, as Detectron2 predicts them) as a padded batch."""
    records, _ = load_coco_json(GT, DATA)
    anns = records[0]["annotations"]
    d = len(anns) + 3
    boxes = np.zeros((1, d, 4), np.float32)
    kps = np.zeros((1, d, 17, 3), np.float32)
    valid = np.zeros((1, d), bool)
    for i, a in enumerate(anns):
        boxes[0, i] = a["bbox"]
        kps[0, i, :, :2] = a["keypoints"][:, :2]
        kps[0, i, :, 2] = 1.0
        valid[0, i] = True
    scores = np.linspace(0.9, 0.5, d, dtype=np.float32)[None]
    return records[0]["image_id"], boxes, scores, kps, valid


def test_gt_keypoints_as_predictions_give_ap_100(gt_as_predictions, tmp_path):
    image_id, boxes, scores, kps, valid = gt_as_predictions
    evaluator = COCOEvaluator(GT, output_dir=str(tmp_path), tasks=("bbox", "keypoints"))
    evaluator.process(
        np.array([image_id]), boxes, scores, np.zeros_like(valid, np.int32), valid, keypoints=kps
    )
    results = evaluator.evaluate()
    assert results["keypoints"]["AP"] == pytest.approx(100.0)
    assert set(results["keypoints"]) >= {"AP", "AP50", "AP75", "APm", "APl"}
    assert "APs" not in results["keypoints"]
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_a_half_pixel_shift_lowers_the_ap(gt_as_predictions):
    """Without the -0.5 the same predictions are 0.5 px off and the AP drops below 100."""
    image_id, boxes, scores, kps, valid = gt_as_predictions
    evaluator = COCOEvaluator(GT, output_dir=None, tasks=("keypoints",))
    shifted = kps.copy()
    shifted[..., :2] += 2.0
    evaluator.process(
        np.array([image_id]), boxes, scores, np.zeros_like(valid, np.int32), valid,
        keypoints=shifted,
    )  # fmt: skip
    assert evaluator.evaluate()["keypoints"]["AP"] < 100.0


def test_oks_sigmas_must_match_the_keypoint_count(gt_as_predictions):
    image_id, boxes, scores, kps, valid = gt_as_predictions
    from jax_rcnn.evaluation.coco_evaluation import instances_to_coco_json

    results = instances_to_coco_json(
        image_id, boxes[0, :2], scores[0, :2], np.ones(2, int), keypoints=kps[0, :2]
    )
    assert len(results[0]["keypoints"]) == 51
    np.testing.assert_allclose(results[0]["keypoints"][:2], kps[0, 0, 0, :2] - 0.5)
    with pytest.raises(ValueError, match="different keypoint counts"):
        evaluate_coco_results(load_coco(GT), results, ("keypoints",), kpt_oks_sigmas=(0.1,) * 5)


def test_an_image_without_detections(tmp_path):
    """Zero valid detections: no results, keypoint AP 0 (not a reshape error)."""
    evaluator = COCOEvaluator(GT, output_dir=None, tasks=("bbox", "keypoints"))
    z = np.zeros((1, 5), bool)
    evaluator.process(
        np.array([1]), np.zeros((1, 5, 4)), np.zeros((1, 5)), np.zeros((1, 5), np.int32), z,
        keypoints=np.zeros((1, 5, 17, 3)),
    )  # fmt: skip
    assert evaluator.evaluate()["keypoints"]["AP"] == 0.0
