"""Detectron2's box-proposal recall (`_evaluate_box_proposals`) on worked examples: greedy
matching, area ranges on the annotation's `area`, crowd and skip rules, limits, and the
evaluator's padded-batch interface. Parity on real Detectron2 numbers is in
tests/jax_rcnn/meta_arch/test_proposal_network_parity.py."""

import json
import math

import numpy as np
import pytest

from jax_rcnn.evaluation.proposal_evaluation import (
    ProposalEvaluator,
    evaluate_box_proposals,
    greedy_gt_overlaps,
    load_proposal_gt,
    pairwise_iou,
    recall_thresholds,
)


def test_thresholds_are_torch_float32_arange():
    t = recall_thresholds()
    assert t.dtype == np.float32 and len(t) == 10
    assert t[3] == np.float32(0.65) and t[-1] == np.float32(0.95)


def test_pairwise_iou_worked_example():
    iou = pairwise_iou(
        np.array([[0, 0, 2, 2], [0, 0, 0, 0]]), np.array([[1, 0, 3, 2], [5, 5, 6, 6]])
    )
    np.testing.assert_allclose(iou, [[1 / 3, 0], [0, 0]], rtol=1e-6)


def test_greedy_matching_takes_the_best_covered_gt_first():
    # Proposal 0 covers gt 0 (0.9) and gt 1 (0.8); proposal 1 covers gt 1 (0.7) only.
    # Round 1 records 0.9 (gt 0 / proposal 0); round 2 records 0.7 (gt 1 / proposal 1): the
    # better 0.8 is gone with proposal 0. Entries are in matching order.
    overlaps = np.array([[0.9, 0.8], [0.0, 0.7]], np.float32)
    np.testing.assert_array_equal(greedy_gt_overlaps(overlaps), np.float32([0.9, 0.7]))
    # More gt than proposals: min(#prop, #gt) rounds, the rest record 0.
    np.testing.assert_array_equal(
        greedy_gt_overlaps(np.array([[0.6, 0.9, 0.1]], np.float32)), np.float32([0.9, 0, 0])
    )


def _gt_json(tmp_path, annotations, images=(1, 2)):
    dataset = {
        "images": [{"id": i, "height": 100, "width": 100, "file_name": f"{i}.jpg"} for i in images],
        "annotations": [{"id": k + 1, "category_id": 1, **a} for k, a in enumerate(annotations)],
        "categories": [{"id": 1, "name": "a"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    return path


def test_area_ranges_crowd_and_skipped_images(tmp_path):
    path = _gt_json(
        tmp_path,
        [
            # image 1: a small gt (area field 100, box 20x20 -- the field decides), a large gt
            {"image_id": 1, "bbox": [0, 0, 20, 20], "area": 100.0, "iscrowd": 0},
            {"image_id": 1, "bbox": [0, 0, 99, 99], "area": 96.0**2, "iscrowd": 0},
            # a crowd annotation: never a gt, never counted
            {"image_id": 1, "bbox": [50, 50, 10, 10], "area": 100.0, "iscrowd": 1},
            # image 2 has gt but gets no proposals: skipped before its gt are counted
            {"image_id": 2, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
        ],
    )
    gt = load_proposal_gt(path)
    assert len(gt[1][0]) == 2 and len(gt[2][0]) == 1
    proposals = {
        1: (np.array([[0, 0, 20, 20], [0, 0, 99, 50.0]], np.float32), np.array([1.0, 2.0])),
        2: (np.zeros((0, 4), np.float32), np.zeros(0)),
    }
    all_ = evaluate_box_proposals(proposals, gt)
    assert all_["num_pos"] == 2  # image 2's gt are not in the denominator
    np.testing.assert_allclose(all_["gt_overlaps"], [50 / 99, 1.0], rtol=1e-6)
    # recall: the exact box at every threshold, the half box (IoU 0.505) only at 0.5
    np.testing.assert_allclose(all_["recalls"], [1.0] + [0.5] * 9)
    assert all_["ar"] == pytest.approx(0.55)
    small = evaluate_box_proposals(proposals, gt, area="small")  # area 100 <= 32^2
    assert small["num_pos"] == 1 and small["ar"] == pytest.approx(1.0)
    large = evaluate_box_proposals(proposals, gt, area="large")  # 96^2 is inclusive
    assert large["num_pos"] == 1 and large["ar"] == pytest.approx(0.1)
    medium = evaluate_box_proposals(proposals, gt, area="medium")  # ... and so is [32², 96²]
    assert medium["num_pos"] == 1 and medium["ar"] == pytest.approx(0.1)
    nothing = evaluate_box_proposals({2: proposals[2]}, gt)
    assert nothing["num_pos"] == 0 and math.isnan(float(nothing["ar"]))  # Detectron2's 0 / 0
    with pytest.raises(ValueError, match="area = 'huge'"):
        evaluate_box_proposals(proposals, gt, area="huge")


def test_limit_keeps_the_highest_logits(tmp_path):
    gt = {1: (np.array([[0, 0, 10, 10]], np.float32), np.array([100.0]))}
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    # The matching box has the lower logit: with limit 1 only the other box is kept.
    proposals = {1: (boxes, np.array([0.5, 3.0]))}
    assert evaluate_box_proposals(proposals, gt, limit=1)["ar"] == 0.0
    assert evaluate_box_proposals(proposals, gt, limit=2)["ar"] == 1.0


def test_evaluator_padded_batches_names_and_gathering(tmp_path):
    path = _gt_json(
        tmp_path,
        [
            {"image_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
            {"image_id": 2, "bbox": [10, 10, 40, 40], "area": 1600.0, "iscrowd": 0},
        ],
    )
    boxes = np.zeros((3, 4, 4), np.float32)
    logits = np.zeros((3, 4), np.float32)
    valid = np.zeros((3, 4), bool)
    boxes[0, 0], logits[0, 0], valid[0, 0] = [0, 0, 10, 10], 1.0, True
    boxes[0, 1], logits[0, 1] = [0, 0, 10, 10], 9.0  # padding: never read
    boxes[1, :2], logits[1, :2], valid[1, :2] = [[10, 10, 30, 30], [10, 10, 40, 40]], [2, 1], True
    ids = np.array([1, 2, 7])
    example_valid = np.array([True, True, False])  # image 7 is padding (not in the json)

    one = ProposalEvaluator(path, output_dir=str(tmp_path / "out"))
    one.process(ids, boxes, logits, valid, example_valid)
    results = one.evaluate()["box_proposals"]
    assert sorted(results) == sorted(
        [f"AR{s}@{n}" for n in (100, 1000) for s in ("", "s", "m", "l")] + ["num_images_evaluated"]
    )
    assert results["num_images_evaluated"] == 2
    # image 1: IoU 1; image 2 (gt xyxy [10, 10, 50, 50]): greedy takes IoU 9/16 = 0.5625
    want = (10 + 2) / 20 * 100  # recalls: gt 1 at all 10 thresholds, gt 2 at 0.50 and 0.55
    assert results["AR@100"] == pytest.approx(want, rel=1e-6)
    assert results["ARs@100"] == pytest.approx(100.0) and results["ARm@100"] == pytest.approx(20.0)
    assert math.isnan(results["ARl@100"])
    assert (tmp_path / "out" / "box_proposals.json").exists()

    # Two hosts: each processes one image, records are gathered: same numbers.
    a, b = ProposalEvaluator(path), ProposalEvaluator(path)
    a.process(ids[:1], boxes[:1], logits[:1], valid[:1])
    b.process(ids[1:2], boxes[1:2], logits[1:2], valid[1:2])
    a.extend(json.loads(json.dumps(b.results())))
    gathered = a.evaluate()["box_proposals"]
    for k, v in results.items():
        assert gathered[k] == v or (math.isnan(v) and math.isnan(gathered[k])), k
    with pytest.raises(ValueError, match="already processed"):
        a.process(ids[:1], boxes[:1], logits[:1], valid[:1])
    with pytest.raises(ValueError, match="not in the ground-truth json"):
        a.process(np.array([7]), boxes[:1], logits[:1], valid[:1])
