"""PQ / SQ / RQ (panopticapi's definition) and SemSegEvaluator metrics on hand-made cases."""

import json

import numpy as np
import pytest
from PIL import Image

from jax_rcnn.evaluation import panoptic_evaluation as pe

CATEGORIES = {
    10: {"id": 10, "isthing": 1, "name": "thing"},
    20: {"id": 20, "isthing": 0, "name": "stuff"},
    30: {"id": 30, "isthing": 0, "name": "never seen"},  # no TP/FP/FN: not averaged
}

# Image 1: gt 1 (8 px) matched by pred 7 (7 px): IoU 7/8; gt 2 matched exactly by pred 8;
# stuff gt 3 (2 px) and pred 9 (4 px, 2 of them on VOID): union excludes pred ∩ VOID -> IoU 1.
GT1 = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 0, 0], [2, 2, 3, 3]])
GT1_SEGMENTS = [
    {"id": 1, "category_id": 10, "iscrowd": 0, "area": 8},
    {"id": 2, "category_id": 10, "iscrowd": 0, "area": 4},
    {"id": 3, "category_id": 20, "iscrowd": 0, "area": 2},
]
PRED1 = np.array([[7, 7, 7, 7], [7, 7, 7, 0], [8, 8, 9, 9], [8, 8, 9, 9]])
PRED1_SEGMENTS = [
    {"id": 7, "category_id": 10},
    {"id": 8, "category_id": 10},
    {"id": 9, "category_id": 20},
]
# Image 2: pred 4 covers half of gt 1: IoU exactly 0.5 is no match (FN + FP); pred 6 lies on a
# crowd region of its category: ignored (no FP); the crowd gt is no FN.
GT2 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [5, 5, 5, 5], [5, 5, 5, 5]])
GT2_SEGMENTS = [
    {"id": 1, "category_id": 10, "iscrowd": 0, "area": 4},
    {"id": 5, "category_id": 10, "iscrowd": 1, "area": 8},
]
PRED2 = np.array([[4, 4, 0, 0], [0, 0, 0, 0], [6, 6, 6, 0], [6, 6, 6, 0]])
PRED2_SEGMENTS = [{"id": 4, "category_id": 10}, {"id": 6, "category_id": 10}]

# cat 10: TP 2 (IoU 0.875 + 1.0), FP 1, FN 1 -> PQ 1.875 / 3, SQ 0.9375, RQ 2 / 3.
# cat 20: TP 1 (IoU 1.0) -> PQ = SQ = RQ = 1.
EXPECTED = {
    "PQ": 100 * (0.625 + 1) / 2,
    "SQ": 100 * (0.9375 + 1) / 2,
    "RQ": 100 * (2 / 3 + 1) / 2,
    "PQ_th": 62.5,
    "SQ_th": 93.75,
    "RQ_th": 100 * 2 / 3,
    "PQ_st": 100.0,
    "SQ_st": 100.0,
    "RQ_st": 100.0,
}


def _stat():
    stat = pe.PQStat()
    pe.pq_compute_single_image(stat, GT1, GT1_SEGMENTS, PRED1, PRED1_SEGMENTS, CATEGORIES)
    pe.pq_compute_single_image(stat, GT2, GT2_SEGMENTS, PRED2, PRED2_SEGMENTS, CATEGORIES)
    return stat


def test_counts_per_category():
    stat = _stat()
    assert (stat[10].tp, stat[10].fp, stat[10].fn) == (2, 1, 1)
    assert stat[10].iou == pytest.approx(1.875)
    assert (stat[20].tp, stat[20].fp, stat[20].fn, stat[20].iou) == (1, 0, 0, 1.0)
    assert (stat[30].tp, stat[30].fp, stat[30].fn) == (0, 0, 0)


def test_pq_sq_rq_all_things_stuff():
    assert pe.pq_results(_stat(), CATEGORIES) == pytest.approx(EXPECTED)
    _, per_class = _stat().average(CATEGORIES)
    assert per_class[30] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_iou_just_above_half_matches():
    """gt 1 (4 px), pred 3 px inside it: IoU 0.75 > 0.5 matches; 2 px: exactly 0.5 does not."""
    gt = np.array([[1, 1, 1, 1]])
    segs = [{"id": 1, "category_id": 10, "iscrowd": 0, "area": 4}]
    for pred, tp in ((np.array([[2, 2, 2, 0]]), 1), (np.array([[2, 2, 0, 0]]), 0)):
        stat = pe.PQStat()
        pe.pq_compute_single_image(stat, gt, segs, pred, [{"id": 2, "category_id": 10}], CATEGORIES)
        assert (stat[10].tp, stat[10].fp, stat[10].fn) == (tp, 1 - tp, 1 - tp)


def test_prediction_mostly_on_void_is_not_a_false_positive():
    gt = np.array([[0, 0, 0, 1]])
    segs = [{"id": 1, "category_id": 10, "iscrowd": 0, "area": 1}]
    stat = pe.PQStat()
    pred = np.array([[2, 2, 0, 0]])
    pe.pq_compute_single_image(stat, gt, segs, pred, [{"id": 2, "category_id": 20}], CATEGORIES)
    assert (stat[20].fp, stat[10].fn) == (0, 1)


def test_file_round_trip_through_pngs(tmp_path):
    def write(name, images):
        folder = tmp_path / name
        folder.mkdir()
        anns = []
        for i, (ids, segs) in enumerate(images):
            Image.fromarray(pe.id2rgb(ids)).save(folder / f"{i}.png")
            anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segs})
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"annotations": anns, "categories": list(CATEGORIES.values())}))
        return path

    big = np.array([[300, 70000]])  # ids beyond one byte survive the RGB encoding
    np.testing.assert_array_equal(pe.rgb2id(pe.id2rgb(big)), big)
    gt = write("gt", [(GT1, GT1_SEGMENTS), (GT2, GT2_SEGMENTS)])
    pred = write("pred", [(PRED1, PRED1_SEGMENTS), (PRED2, PRED2_SEGMENTS)])
    assert pe.pq_compute(gt, pred) == pytest.approx(EXPECTED)


def test_bad_predictions_name_the_image():
    stat = pe.PQStat()
    with pytest.raises(KeyError, match="img.png: segment 9 is in the predicted PNG"):
        pe.pq_compute_single_image(
            stat, GT1, GT1_SEGMENTS, PRED1, PRED1_SEGMENTS[:2], CATEGORIES, "img.png"
        )
    with pytest.raises(KeyError, match=r"segments \[11\] are in the predicted JSON"):
        pe.pq_compute_single_image(
            stat,
            GT1,
            GT1_SEGMENTS,
            PRED1,
            [*PRED1_SEGMENTS, {"id": 11, "category_id": 10}],
            CATEGORIES,
        )


def test_sem_seg_metrics_by_hand():
    """K = 2: gt [0, 0, 1, 1, ignore], pred [0, 1, 1, 1, 0]: IoU 1/2 and 2/3, the prediction on
    the ignored pixel does not count."""
    conf = pe.sem_seg_confusion(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 255]), 2, 255)
    res = pe.sem_seg_metrics(conf, ["a", "b"])
    assert res["IoU-a"] == pytest.approx(50.0)
    assert res["IoU-b"] == pytest.approx(200 / 3)
    assert res["mIoU"] == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert res["fwIoU"] == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 2 / 3))
    assert res["mACC"] == pytest.approx(75.0)
    assert res["pACC"] == pytest.approx(75.0)
    # a class without gt pixels is NaN and left out of the means
    conf = pe.sem_seg_confusion(np.array([0, 0]), np.array([0, 0]), 2, 255)
    res = pe.sem_seg_metrics(conf)
    assert res["mIoU"] == 100.0 and np.isnan(res["IoU-1"])


def test_panoptic_evaluator_maps_contiguous_ids_and_adds_semantic_metrics(tmp_path):
    """Predictions with contiguous ids (thing 0 -> 10, stuff 1 -> 20, 2 -> 30) give the same PQ
    as the files; the semantic argmax against the gt semantic PNGs gives SemSegEvaluator's."""
    folder = tmp_path / "gt"
    folder.mkdir()
    anns = []
    sem_files = {}
    for i, (ids, segs) in enumerate([(GT1, GT1_SEGMENTS), (GT2, GT2_SEGMENTS)]):
        Image.fromarray(pe.id2rgb(ids)).save(folder / f"{i}.png")
        anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segs})
        sem = np.where(ids == 3, 1, np.where(ids == 0, 255, 0)).astype(np.uint8)
        Image.fromarray(sem).save(tmp_path / f"sem{i}.png")
        sem_files[i] = str(tmp_path / f"sem{i}.png")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"annotations": anns, "categories": list(CATEGORIES.values())}))
    evaluator = pe.PanopticEvaluator(
        gt,
        folder,
        thing_contiguous_to_id={0: 10},
        stuff_contiguous_to_id={1: 20, 2: 30},
        num_sem_classes=3,
        sem_seg_files=sem_files,
        sem_class_names=["things", "stuff", "never seen"],
    )

    def contiguous(segments):
        return [
            {"id": s["id"], "isthing": s["category_id"] == 10, "category_id": 0}
            if s["category_id"] == 10
            else {"id": s["id"], "isthing": False, "category_id": 1}
            for s in segments
        ]

    evaluator.process(0, PRED1, contiguous(PRED1_SEGMENTS), np.zeros((4, 4), np.int32))
    evaluator.process(1, PRED2, contiguous(PRED2_SEGMENTS), np.zeros((4, 4), np.int32))
    results = evaluator.evaluate()
    assert results["panoptic_seg"] == pytest.approx(EXPECTED)
    # gt labels: image 1 has 12 "things" pixels, 2 "stuff", 2 ignored; image 2 12 things, 4
    # ignored; predicting 0 everywhere: IoU things 24 / 26 (the 6 ignored pixels not counted),
    # stuff 0, "never seen" has no gt pixel (NaN, not averaged).
    assert results["sem_seg"]["IoU-things"] == pytest.approx(100 * 24 / 26)
    assert results["sem_seg"]["IoU-stuff"] == 0.0
    assert results["sem_seg"]["mIoU"] == pytest.approx(100 * 24 / 26 / 2)
    assert results["sem_seg"]["pACC"] == pytest.approx(100 * 24 / 26)
