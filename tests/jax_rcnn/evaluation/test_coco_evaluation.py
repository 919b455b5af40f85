"""Tests for jax_rcnn.evaluation.coco_evaluation against pycocotools called directly."""

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jax_rcnn.evaluation import (
    COCOEvaluator,
    evaluate_results_file,
    instances_to_coco_json,
)
from jax_rcnn.evaluation.coco_evaluation import RESULTS_FILE_NAME

TINY_GT = str(Path(__file__).parents[2] / "data" / "tiny_maskrcnn" / "annotations.json")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _pycocotools_metrics(gt_json, coco_results, iou_type):
    """AP x100 (NaN for -1) and per-category AP straight from pycocotools, as the reference."""
    coco_gt = _quiet_coco(gt_json)
    results = [dict(r) for r in coco_results]
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    out = {
        m: coco_eval.stats[i] * 100 if coco_eval.stats[i] >= 0 else math.nan
        for i, m in enumerate(METRICS)
    }
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = coco_eval.eval["precision"][:, :, k, 0, -1]
        p = p[p > -1]
        out["AP-" + coco_gt.cats[cat_id]["name"]] = np.mean(p) * 100 if p.size else math.nan
    return out


def _assert_metrics_equal(got, expected):
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            # The same numbers as pycocotools up to float summation order: the default
            # COCOeval (faster-coco-eval, C++) sums precisions in another order (seen: 4e-15).
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, got[key], value)


def _assert_results_equal(got, expected):
    assert set(got) == set(expected)
    for task in expected:
        assert set(got[task]) == set(expected[task])
        _assert_metrics_equal(got[task], expected[task])


def _padded_batch(coco, image_ids, dets_per_image, num_dets, mask_hw, rng):
    """Pads per-image detection lists into a batch; invalid slots hold seeded garbage.

    ``dets_per_image[i]`` is a list of (xywh, score, contiguous class, mask) tuples.
    """
    num_images = len(image_ids)
    boxes = rng.uniform(-50, 900, (num_images, num_dets, 4)).astype(np.float32)
    scores = rng.uniform(0, 1, (num_images, num_dets)).astype(np.float32)
    classes = rng.integers(-5, 50, (num_images, num_dets)).astype(np.int32)
    valid = np.zeros((num_images, num_dets), bool)
    masks = rng.integers(0, 2, (num_images, num_dets, *mask_hw)).astype(bool)
    for b, dets in enumerate(dets_per_image):
        # Garbage also in the padded bottom/right border of valid slots: it must be cropped.
        for d, (xywh, score, cls, mask) in enumerate(dets):
            x, y, w, h = np.float32(xywh)
            boxes[b, d] = [x, y, x + w, y + h]
            scores[b, d] = score
            classes[b, d] = cls
            valid[b, d] = True
            masks[b, d, : mask.shape[0], : mask.shape[1]] = mask
    return np.asarray(image_ids, np.int64), boxes, scores, classes, valid, masks


def _gt_detections(coco, image_id, cat_to_class):
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    return [(a["bbox"], 1.0, cat_to_class[a["category_id"]], coco.annToMask(a)) for a in anns]


def _reference_results(image_ids, dets_per_image, class_to_cat):
    """The COCO result list built independently of the module (boxes quarter-pixel exact)."""
    results = []
    for image_id, dets in zip(image_ids, dets_per_image, strict=True):
        for xywh, score, cls, mask in dets:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(class_to_cat[cls]),
                    "bbox": [float(v) for v in xywh],
                    "score": float(np.float32(score)),
                    "segmentation": rle,
                }
            )
    return results


@pytest.fixture(scope="module")
def tiny_coco():
    return _quiet_coco(TINY_GT)


def test_ground_truth_as_detections_gives_ap_100(tiny_coco, tmp_path):
    rng = np.random.default_rng(0)
    cat_to_class = {c: i for i, c in enumerate(sorted(tiny_coco.getCatIds()))}
    dets = [_gt_detections(tiny_coco, 1, cat_to_class)]
    assert len(dets[0]) == 19
    batch = _padded_batch(tiny_coco, [1], dets, 24, (380, 512), rng)
    evaluator = COCOEvaluator(TINY_GT, output_dir=str(tmp_path))
    evaluator.process(*batch)
    results = evaluator.evaluate()

    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        metrics = results[task]
        assert metrics["AP"] == 100.0 and metrics["AP50"] == 100.0 and metrics["AP75"] == 100.0
        for name in ("person", "chair", "dining table", "bottle"):
            # pycocotools' precision tp / (tp + fp + eps) is 1 - 2e-16 for a class with 1 instance.
            assert metrics["AP-" + name] == pytest.approx(100.0, abs=1e-12)
        for m in ("APs", "APm", "APl"):
            assert metrics[m] == 100.0 or math.isnan(metrics[m])
        assert metrics["num_images_evaluated"] == 1 and metrics["num_images"] == 1

    written = json.loads((tmp_path / RESULTS_FILE_NAME).read_text())
    assert len(written) == 19
    assert {r["category_id"] for r in written} == {1, 2, 3, 4}
    from_file = evaluate_results_file(TINY_GT, str(tmp_path / RESULTS_FILE_NAME))
    for task in ("bbox", "segm"):
        _assert_metrics_equal(
            from_file[task], {k: v for k, v in results[task].items() if k.startswith("AP")}
        )


def _perturbed(coco, image_ids, cat_to_class, rng):
    """GT jittered by quarter pixels, ~25% dropped, random scores, masks rolled, extra FPs."""
    num_classes = len(cat_to_class)
    dets_per_image = []
    for image_id in image_ids:
        img = coco.imgs[image_id]
        dets = []
        for xywh, _, cls, mask in _gt_detections(coco, image_id, cat_to_class):
            if rng.uniform() < 0.25:
                continue
            jitter = rng.integers(-16, 17, 4) / 4.0
            xywh = [
                xywh[0] + jitter[0],
                xywh[1] + jitter[1],
                max(xywh[2] + jitter[2], 1.0),
                max(xywh[3] + jitter[3], 1.0),
            ]
            mask = np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            if rng.uniform() < 0.15:
                cls = int(rng.integers(num_classes))
            dets.append((xywh, float(rng.uniform(0.05, 1.0)), cls, mask))
        for _ in range(3):  # false positives
            x, y = rng.integers(0, 100, 2)
            mask = np.zeros((img["height"], img["width"]), bool)
            mask[y : y + 20, x : x + 30] = True
            dets.append(
                (
                    [float(x), float(y), 30.0, 20.0],
                    float(rng.uniform(0.05, 1.0)),
                    int(rng.integers(num_classes)),
                    mask,
                )
            )
        dets_per_image.append(dets)
    return dets_per_image


def test_perturbed_detections_match_pycocotools(tiny_coco):
    rng = np.random.default_rng(1)
    cat_ids = sorted(tiny_coco.getCatIds())
    cat_to_class = {c: i for i, c in enumerate(cat_ids)}
    dets = _perturbed(tiny_coco, [1], cat_to_class, rng)
    evaluator = COCOEvaluator(TINY_GT, output_dir=None)
    evaluator.process(*_padded_batch(tiny_coco, [1], dets, 30, (375, 500), rng))
    results = evaluator.evaluate()

    reference = _reference_results([1], dets, cat_ids)
    for task in ("bbox", "segm"):
        expected = _pycocotools_metrics(TINY_GT, reference, task)
        assert 0 < expected["AP"] < 100
        _assert_metrics_equal(results[task], expected)


def test_processing_an_image_twice_raises(tiny_coco):
    rng = np.random.default_rng(2)
    cat_to_class = {c: i for i, c in enumerate(sorted(tiny_coco.getCatIds()))}
    dets = [_gt_detections(tiny_coco, 1, cat_to_class)]
    batch = _padded_batch(tiny_coco, [1], dets, 20, (375, 500), rng)
    evaluator = COCOEvaluator(TINY_GT, output_dir=None, tasks=("bbox",))
    evaluator.process(*batch[:5])
    with pytest.raises(ValueError, match="already processed"):
        evaluator.process(*batch[:5])
    assert len(evaluator.results()) == 1
    assert evaluator.evaluate()["bbox"]["AP"] == 100.0

    evaluator.reset()
    twice = [np.concatenate([a, a]) for a in batch[:5]]
    with pytest.raises(ValueError, match="twice in one batch"):
        evaluator.process(*twice)
    assert evaluator.results() == []  # a failed call stores nothing


def test_padded_examples_are_ignored(tiny_coco):
    rng = np.random.default_rng(3)
    cat_ids = sorted(tiny_coco.getCatIds())
    dets = _perturbed(tiny_coco, [1], {c: i for i, c in enumerate(cat_ids)}, rng)
    ids, boxes, scores, classes, valid, masks = _padded_batch(
        tiny_coco, [1], dets, 30, (375, 500), rng
    )
    single = COCOEvaluator(TINY_GT, output_dir=None)
    single.process(ids, boxes, scores, classes, valid, masks)

    # Padding examples carry a repeated id, an unknown id, and garbage "valid" detections.
    def pad(a, fill):
        return np.concatenate([fill, a, fill[:1]])

    garbage = _padded_batch(tiny_coco, [1, 999], [[], []], 30, (375, 500), rng)
    padded = COCOEvaluator(TINY_GT, output_dir=None)
    padded.process(
        pad(ids, garbage[0]),
        pad(boxes, garbage[1]),
        pad(scores, garbage[2]),
        pad(classes, np.abs(garbage[3]) % 4),
        pad(valid, np.ones_like(garbage[4])),
        pad(masks, garbage[5]),
        example_valid=np.array([False, False, True, False]),
    )
    assert padded.results() == single.results()
    _assert_results_equal(padded.evaluate(), single.evaluate())


def test_empty_detections(tmp_path, caplog):
    evaluator = COCOEvaluator(TINY_GT, output_dir=str(tmp_path))
    evaluator.process(
        np.array([1]),
        np.zeros((1, 5, 4), np.float32),
        np.zeros((1, 5), np.float32),
        np.zeros((1, 5), np.int32),
        np.zeros((1, 5), bool),
        np.zeros((1, 5, 375, 500), bool),
    )
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        # Exact COCO numbers for no detections: precision 0 wherever there is ground truth.
        assert results[task]["AP"] == 0.0 and results[task]["AP-person"] == 0.0
    assert json.loads((tmp_path / RESULTS_FILE_NAME).read_text()) == []
    _assert_results_equal(
        evaluate_results_file(TINY_GT, str(tmp_path / RESULTS_FILE_NAME)),
        {task: {k: v for k, v in m.items() if k.startswith("AP")} for task, m in results.items()},
    )

    # Nothing processed at all: still evaluated over the whole split, loudly.
    evaluator.reset()
    with caplog.at_level(logging.ERROR):
        results = evaluator.evaluate()
    assert "1 of 1 ground-truth images were never processed" in caplog.text
    assert results["bbox"]["AP"] == 0.0 and results["bbox"]["num_images_evaluated"] == 0


def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h * 0.6, x + w * 0.5, y + h, x, y + h]]


@pytest.fixture(scope="module")
def synthetic_gt(tmp_path_factory):
    """5 images of different sizes, polygon masks, non-contiguous category ids, 1 empty image."""
    rng = np.random.default_rng(4)
    sizes = {10: (60, 80), 11: (90, 70), 12: (50, 50), 13: (64, 96), 14: (40, 100)}
    categories = [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 17, "name": "cow"}]
    annotations = []
    for image_id, (height, width) in sizes.items():
        if image_id == 12:
            continue  # an image without annotations
        for _ in range(int(rng.integers(1, 5))):
            w, h = rng.integers(8, 30, 2)
            x, y = rng.integers(0, width - w), rng.integers(0, height - h)
            seg = _polygon(float(x), float(y), float(w), float(h))
            rle = mask_util.merge(mask_util.frPyObjects(seg, int(height), int(width)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([5, 9, 17])),
                    "segmentation": seg,
                    "area": float(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    gt = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "height": h, "width": w}
            for i, (h, w) in sizes.items()
        ],
        "annotations": annotations,
        "categories": categories,
    }
    path = tmp_path_factory.mktemp("synthetic") / "gt.json"
    path.write_text(json.dumps(gt))
    return str(path)


def _synthetic_detections(coco, image_ids, rng):
    cat_ids = sorted(coco.getCatIds())
    dets = _perturbed(coco, image_ids, {c: i for i, c in enumerate(cat_ids)}, rng)
    return cat_ids, dets


def test_multi_image_batches_match_pycocotools(synthetic_gt):
    rng = np.random.default_rng(5)
    coco = _quiet_coco(synthetic_gt)
    image_ids = [10, 11, 12, 13, 14]
    cat_ids, dets = _synthetic_detections(coco, image_ids, rng)
    evaluator = COCOEvaluator(synthetic_gt, output_dir=None)
    # Two batches of differently sized images; masks padded to the batch maximum.
    evaluator.process(*_padded_batch(coco, image_ids[:3], dets[:3], 10, (96, 80), rng))
    evaluator.process(*_padded_batch(coco, image_ids[3:], dets[3:], 10, (70, 100), rng))
    results = evaluator.evaluate()

    reference = _reference_results(image_ids, dets, cat_ids)
    for task in ("bbox", "segm"):
        expected = _pycocotools_metrics(synthetic_gt, reference, task)
        assert set(expected) >= {"AP-cat", "AP-dog", "AP-cow"}
        _assert_metrics_equal(results[task], expected)
        assert results[task]["num_images_evaluated"] == 5

    # The same detections with masks given as per-image RLE lists (one per valid detection).
    rle_evaluator = COCOEvaluator(synthetic_gt, output_dir=None)
    for lo, hi in ((0, 3), (3, 5)):
        batch = _padded_batch(coco, image_ids[lo:hi], dets[lo:hi], 10, (96, 100), rng)
        rles = [
            [r["segmentation"] for r in reference if r["image_id"] == i] for i in image_ids[lo:hi]
        ]
        rle_evaluator.process(*batch[:5], masks=rles)
    _assert_results_equal(rle_evaluator.evaluate(), results)


def test_unprocessed_images_count_as_missed_and_are_reported(synthetic_gt, caplog):
    rng = np.random.default_rng(6)
    coco = _quiet_coco(synthetic_gt)
    cat_ids, dets = _synthetic_detections(coco, [10, 13], rng)
    evaluator = COCOEvaluator(synthetic_gt, output_dir=None)
    evaluator.process(*_padded_batch(coco, [10, 13], dets, 10, (64, 96), rng))
    with caplog.at_level(logging.ERROR):
        results = evaluator.evaluate()
    assert "3 of 5 ground-truth images were never processed" in caplog.text

    reference = _reference_results([10, 13], dets, cat_ids)
    for task in ("bbox", "segm"):
        # pycocotools evaluates over every gt image too: the missing ones lower the recall.
        _assert_metrics_equal(results[task], _pycocotools_metrics(synthetic_gt, reference, task))
        assert results[task]["num_images_evaluated"] == 2
        assert results[task]["num_images"] == 5


def test_results_gathered_from_hosts(synthetic_gt):
    rng = np.random.default_rng(7)
    coco = _quiet_coco(synthetic_gt)
    image_ids = [10, 11, 12, 13, 14]
    _, dets = _synthetic_detections(coco, image_ids, rng)
    batches = [
        _padded_batch(coco, image_ids[i : i + 1], dets[i : i + 1], 8, (90, 100), rng)
        for i in range(5)
    ]
    whole = COCOEvaluator(synthetic_gt, output_dir=None)
    hosts = [COCOEvaluator(synthetic_gt, output_dir=None) for _ in range(2)]
    for i, batch in enumerate(batches):
        whole.process(*batch)
        hosts[i % 2].process(*batch)
    gathered = json.loads(json.dumps(hosts[1].results()))  # what crosses hosts is plain JSON
    hosts[0].extend(gathered)
    _assert_results_equal(hosts[0].evaluate(), whole.evaluate())
    with pytest.raises(ValueError, match="already processed"):
        hosts[0].extend(gathered[:1])


def test_invalid_inputs_raise():
    evaluator = COCOEvaluator(TINY_GT, output_dir=None)
    args = (
        np.array([1]),
        np.zeros((1, 2, 4), np.float32),
        np.ones((1, 2), np.float32),
        np.array([[0, 4]], np.int32),
        np.array([[True, False]]),
    )
    with pytest.raises(ValueError, match="needs masks"):
        evaluator.process(*args)
    bbox_only = COCOEvaluator(TINY_GT, output_dir=None, tasks=("bbox",))
    bbox_only.process(*args)  # class 4 is out of range but sits in an invalid slot
    bbox_only.reset()
    with pytest.raises(ValueError, match="class ids outside"):
        bbox_only.process(np.array([1]), *args[1:4], np.array([[True, True]]))
    with pytest.raises(ValueError, match="not in the ground-truth"):
        bbox_only.process(np.array([2]), *args[1:])
    with pytest.raises(ValueError, match="unsupported task"):
        COCOEvaluator(TINY_GT, output_dir=None, tasks=("panoptic",))


def test_instances_to_coco_json_worked_example():
    rle = mask_util.encode(np.asfortranarray(np.eye(4, dtype=np.uint8)))
    out = instances_to_coco_json(
        7, np.array([[1.0, 2.0, 4.0, 8.5]]), np.array([0.5]), np.array([3]), [rle]
    )
    assert out == [
        {
            "image_id": 7,
            "category_id": 3,
            "bbox": [1.0, 2.0, 3.0, 6.5],
            "score": 0.5,
            "segmentation": {"size": [4, 4], "counts": rle["counts"].decode()},
        }
    ]
    json.dumps(out)


def test_faster_coco_eval_reproduces_pycocotools(synthetic_gt, monkeypatch):
    """The default backend (faster-coco-eval's C++ COCOeval) gives pycocotools' numbers: every
    stat and the whole precision array, up to float rounding (1e-12; seen <= 4e-15)."""
    from jax_rcnn.evaluation import coco_evaluation as ce

    assert ce.COCOeval_faster is not None, "faster-coco-eval is a dependency"
    assert ce.cocoeval_class() is ce.COCOeval_faster
    coco = _quiet_coco(synthetic_gt)
    image_ids = [10, 11, 12, 13, 14]
    cat_ids, dets = _synthetic_detections(coco, image_ids, np.random.default_rng(7))
    reference = _reference_results(image_ids, dets, cat_ids)
    for task in ("bbox", "segm"):
        fast = ce.evaluate_predictions_on_coco(coco, reference, task, backend="faster_coco_eval")
        slow = ce.evaluate_predictions_on_coco(coco, reference, task, backend="pycocotools")
        assert type(slow) is COCOeval
        np.testing.assert_allclose(fast.stats, slow.stats, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fast.eval["precision"], slow.eval["precision"], atol=1e-12)
        np.testing.assert_allclose(fast.eval["recall"], slow.eval["recall"], atol=1e-12)
    monkeypatch.setenv(ce.COCOEVAL_ENV, "pycocotools")
    assert ce.cocoeval_class() is COCOeval
    with pytest.raises(ValueError, match="JAX_RCNN_COCOEVAL"):
        ce.cocoeval_class("cpp")
