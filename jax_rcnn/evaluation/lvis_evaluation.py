"""LVIS AP (AP, AP50, AP75, APs/m/l, APr/APc/APf) of COCO-format results (host side).

Parity: Detectron2's `LVISEvaluator` (`detectron2/evaluation/lvis_evaluation.py:
_evaluate_predictions_on_lvis`), which runs the official `lvis` package: `LVISResults(gt,
results, max_dets=300)` keeps each image's 300 highest-scoring detections (over all categories),
then `LVISEval` evaluates with LVIS's federated rules: an image is evaluated only for the
categories it is annotated for, positive (`annotations`) or negative (`neg_category_ids`);
detections of any other category are dropped; unmatched detections of a category in the image's
`not_exhaustive_category_ids` are ignored, not false positives; AP is averaged over all
categories and over each frequency group (`categories[*]["frequency"]`: r / c / f). For mask AP
the results' boxes are dropped, so small/medium/large use the mask area. Metrics are x100, -100
where a group has no category with ground truth (LVIS's -1).

Implementation: the `lvis` package (0.5.3, the last release) imports cv2 and matplotlib at import
time and uses `np.float`, which NumPy >= 1.24 no longer has; jax_rcnn instead uses
`faster_coco_eval`'s `lvis_style` evaluation (already a dependency, C++). Its numbers equal the
official package's on a fixture made with it (`tests/data/lvis/make_reference.py`; the test
compares all 13 numbers of both AP types to 1e-6).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LVIS_MAX_DETS = 300  # LVISEvaluator's default (max_dets_per_image None)
LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_FREQUENCIES = ("r", "c", "f")
# faster_coco_eval's `stats_as_dict` labels -> LVIS's names (x100).
_LABELS = {
    "AP_all": "AP",
    "AP_50": "AP50",
    "AP_75": "AP75",
    "AP_small": "APs",
    "AP_medium": "APm",
    "AP_large": "APl",
    "APr": "APr",
    "APc": "APc",
    "APf": "APf",
    "AR_all": "AR@300",
    "AR_small": "ARs@300",
    "AR_medium": "ARm@300",
    "AR_large": "ARl@300",
}


def check_lvis_ground_truth(gt: Mapping[str, Any], json_file: str) -> None:
    """Checks the fields LVIS evaluation needs; errors name the file and entry.

    Raises:
        ValueError: a category without `frequency` in {r, c, f}, or an image whose
            `neg_category_ids` / `not_exhaustive_category_ids` is not a list of known ids.
    """
    cat_ids = set()
    for i, c in enumerate(gt.get("categories", [])):
        if c.get("frequency") not in _FREQUENCIES:
            raise ValueError(
                f"{json_file}: categories[{i}] (id {c.get('id')}) needs 'frequency' in "
                f"{_FREQUENCIES} for LVIS evaluation, got {c.get('frequency')!r}"
            )
        cat_ids.add(c["id"])
    for i, img in enumerate(gt.get("images", [])):
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            ids = img.get(key, [])
            if not isinstance(ids, list) or not set(ids) <= cat_ids:
                raise ValueError(
                    f"{json_file}: images[{i}] (id {img.get('id')}) field '{key}' must be a "
                    f"list of category ids, got {ids!r}"
                )


def limit_dets_per_image(results: Sequence[dict], max_dets: int) -> list[dict]:
    """Each image's `max_dets` highest-scoring results (`LVISResults.limit_dets_per_image`:
    a stable sort by score, so ties keep their order)."""
    per_image: dict[Any, list[dict]] = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    out = []
    for anns in per_image.values():
        out.extend(sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets])
    return out


def evaluate_predictions_on_lvis(
    gt: str | os.PathLike | Mapping[str, Any],
    results: Sequence[dict],
    iou_type: str,
    *,
    max_dets_per_image: int = LVIS_MAX_DETS,
) -> dict[str, float]:
    """LVIS metrics of COCO-format results (category ids are the json's LVIS ids).

    Args:
        gt: the LVIS json (path or the loaded dict; not modified).
        results: `[{"image_id", "category_id", "bbox" [x, y, w, h], "score",
            "segmentation" (RLE, for "segm")}, ...]` (not modified).
        iou_type: "bbox" or "segm".
        max_dets_per_image: detections kept per image before evaluation (LVIS: 300).

    Returns:
        `{"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300", ...}`, x100,
        -100 for a group without ground truth; NaN for every metric when there are no results
        (as Detectron2).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not results:
        logger.warning("LVIS evaluation: no predictions")
        return {m: float("nan") for m in LVIS_METRICS}
    if isinstance(gt, str | os.PathLike):
        import json

        json_file = os.fspath(gt)
        with open(json_file, encoding="utf-8") as f:
            gt = json.load(f)
    else:
        json_file, gt = "<LVIS ground truth>", copy.deepcopy(dict(gt))
    check_lvis_ground_truth(gt, json_file)
    results = copy.deepcopy(list(results))
    if iou_type == "segm":
        for r in results:  # mask area for small / medium / large (Detectron2 does the same)
            r.pop("bbox", None)
    results = limit_dets_per_image(results, max_dets_per_image)
    # LVIS ignores a detection whose category is neither annotated in its image nor one of the
    # image's `neg_category_ids` (not verified there). Dropping those after the per-image limit
    # changes no number, and faster-coco-eval's segm path fails on them (`IndexError:
    # unordered_map::at`) when the image has no annotation at all.
    verified = {im["id"]: set(im.get("neg_category_ids", ())) for im in gt["images"]}
    for a in gt["annotations"]:
        verified.setdefault(a["image_id"], set()).add(a["category_id"])
    results = [r for r in results if r["category_id"] in verified.get(r["image_id"], ())]

    coco_gt = COCO(gt)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, lvis_style=True, print_function=_log)
    evaluator.params.maxDets = [max_dets_per_image]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    out = {}
    for label, name in _LABELS.items():
        v = float(stats[label])
        out[name.replace("300", str(max_dets_per_image))] = v * 100 if v >= 0 else -100.0
    return out


def _log(*args: Any) -> None:
    logger.info(" ".join(str(a) for a in args))


def lvis_frequency_groups(categories: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Contiguous class indices of each LVIS frequency group.

    Args:
        categories: the json's `categories` (with `id`, `frequency`).

    Returns:
        `{"r": i64[Kr], "c": i64[Kc], "f": i64[Kf]}`, indices into the id-sorted categories.
    """
    cats = sorted(categories, key=lambda c: c["id"])
    return {
        g: np.array([i for i, c in enumerate(cats) if c.get("frequency") == g], np.int64)
        for g in _FREQUENCIES
    }


LVIS_RESULTS_FILE_NAME = "lvis_instances_results.json"  # Detectron2's name


class LVISEvaluator:
    """Detectron2's `LVISEvaluator`: collects detections like `COCOEvaluator` (same `process`,
    `results`, `extend`), evaluates them with LVIS's rules (`evaluate_predictions_on_lvis`).

    Example:
        >>> evaluator = LVISEvaluator("lvis_v1_val.json", output_dir=None)  # doctest: +SKIP
        >>> evaluator.process(...)                                           # doctest: +SKIP
        >>> evaluator.evaluate()["bbox"]["APr"]                              # doctest: +SKIP
    """

    def __init__(
        self,
        gt_json: str,
        *,
        output_dir: str | None,
        contiguous_to_dataset_id: Mapping[int, int] | None = None,
        tasks: Sequence[str] = ("bbox", "segm"),
        max_dets_per_image: int = LVIS_MAX_DETS,
    ):
        """Loads and checks the LVIS ground truth (arguments as `COCOEvaluator`'s).

        Raises:
            ValueError: the json lacks the LVIS fields (`check_lvis_ground_truth`).
        """
        import json

        from jax_rcnn.evaluation.coco_evaluation import COCOEvaluator

        self._collector = COCOEvaluator(
            gt_json,
            output_dir=None,
            contiguous_to_dataset_id=contiguous_to_dataset_id,
            tasks=tasks,
        )
        with open(gt_json, encoding="utf-8") as f:
            self._gt = json.load(f)
        check_lvis_ground_truth(self._gt, gt_json)
        self._tasks, self._output_dir = tuple(tasks), output_dir
        self._max_dets = int(max_dets_per_image)
        self.process = self._collector.process
        self.results = self._collector.results
        self.extend = self._collector.extend
        self.reset = self._collector.reset

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Writes `lvis_instances_results.json` and evaluates every task.

        Returns:
            `{task: {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300",
            ..., "num_images_evaluated", "num_images"}}` (percent).
        """
        records = self._collector.results()
        results = [inst for record in records for inst in record["instances"]]
        num_images = len(self._gt["images"])
        if len(records) < num_images:
            logger.error(
                "%d of %d ground-truth images were never processed; these LVIS metrics are NOT "
                "those of the model on the whole split.",
                num_images - len(records),
                num_images,
            )
        if self._output_dir:
            import json

            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, LVIS_RESULTS_FILE_NAME)
            with open(path, "w") as f:
                json.dump(results, f)
        out = {}
        for task in self._tasks:
            metrics = evaluate_predictions_on_lvis(
                self._gt, results, task, max_dets_per_image=self._max_dets
            )
            metrics["num_images_evaluated"] = len(records)
            metrics["num_images"] = num_images
            out[task] = metrics
        return out
