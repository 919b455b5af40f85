"""LVIS AP through faster_coco_eval's lvis_style equals the official `lvis` package's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jax_rcnn.evaluation import lvis_evaluation as LV

DATA = Path(__file__).resolve().parents[2] / "data" / "lvis"


@pytest.fixture(scope="module")
def fixture():
    gt = json.loads((DATA / "lvis_gt.json").read_text())
    results = json.loads((DATA / "lvis_results.json").read_text())
    reference = json.loads((DATA / "lvis_reference.json").read_text())
    return gt, results, reference


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equals_the_lvis_package(fixture, iou_type):
    gt, results, reference = fixture
    got = LV.evaluate_predictions_on_lvis(DATA / "lvis_gt.json", results, iou_type)
    assert set(reference[iou_type]) <= set(got)
    for k, v in reference[iou_type].items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    # The fixture exercises every LVIS rule: each one changes the numbers.
    plain_gt = {**gt, "images": [{**im, "neg_category_ids": []} for im in gt["images"]]}
    assert LV.evaluate_predictions_on_lvis(plain_gt, results, iou_type)["AP"] != got["AP"]
    exhaustive = {
        **gt,
        "images": [{**im, "not_exhaustive_category_ids": []} for im in gt["images"]],
    }
    assert LV.evaluate_predictions_on_lvis(exhaustive, results, iou_type)["AP"] != got["AP"]
    more = LV.evaluate_predictions_on_lvis(gt, results, iou_type, max_dets_per_image=1000)
    assert more["AP"] != got["AP"]  # image 10 has 320 detections


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_unverified_category_on_an_image_without_annotations_is_ignored(fixture, iou_type):
    """LVIS ignores detections of categories neither annotated nor negative in their image; on
    an image with no annotation such a detection crashed faster-coco-eval's segm path."""
    gt, results, _ = fixture
    annotated = {a["image_id"] for a in gt["annotations"]}
    empty = {"id": 999, "file_name": "empty.png", "height": 32, "width": 32}
    empty.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    gt = {**gt, "images": [*gt["images"], empty]}
    assert 999 not in annotated
    stray = {**results[0], "image_id": 999, "score": 0.99}
    stray["category_id"] = gt["categories"][0]["id"]
    want = LV.evaluate_predictions_on_lvis(gt, results, iou_type)
    got = LV.evaluate_predictions_on_lvis(gt, [*results, stray], iou_type)
    assert got == want


def test_inputs_are_not_modified_and_no_results_give_nan(fixture):
    gt, results, _ = fixture
    before = json.dumps([gt, results])
    LV.evaluate_predictions_on_lvis(gt, results, "segm")
    assert json.dumps([gt, results]) == before
    out = LV.evaluate_predictions_on_lvis(gt, [], "bbox")
    assert set(out) == set(LV.LVIS_METRICS) and all(v != v for v in out.values())


def test_limit_dets_per_image_keeps_the_top_scores_stably():
    results = [
        {"image_id": i % 2, "score": s, "k": n}
        for n, (i, s) in enumerate([(0, 0.5), (0, 0.9), (1, 0.1), (0, 0.5), (0, 0.2), (1, 0.3)])
    ]
    kept = LV.limit_dets_per_image(results, 2)
    assert sorted(r["k"] for r in kept) == [0, 1, 2, 5]  # ties: the first one listed stays


def test_bad_lvis_fields_name_the_entry(fixture):
    gt = json.loads(json.dumps(fixture[0]))
    gt["categories"][3]["frequency"] = "x"
    with pytest.raises(ValueError, match=r"categories\[3\] \(id 4\).*frequency"):
        LV.evaluate_predictions_on_lvis(gt, fixture[1], "bbox")
    gt = json.loads(json.dumps(fixture[0]))
    gt["images"][2]["neg_category_ids"] = [99]
    with pytest.raises(ValueError, match=r"images\[2\] \(id 12\).*neg_category_ids"):
        LV.evaluate_predictions_on_lvis(gt, fixture[1], "bbox")


def test_frequency_groups(fixture):
    groups = LV.lvis_frequency_groups(fixture[0]["categories"])
    assert groups["f"].tolist() == [0, 1] and groups["c"].tolist() == [2, 3, 4]
    assert groups["r"].tolist() == [5, 6, 7]
