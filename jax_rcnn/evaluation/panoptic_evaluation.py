"""Panoptic quality (PQ / SQ / RQ) as panopticapi computes it, and semantic-segmentation metrics
as Detectron2's `SemSegEvaluator` (host side, NumPy only).

**Parity:** `pq_compute_single_image` + `PQStat.average` reproduce panopticapi's
`evaluation.py:pq_compute_single_core` and `PQStat.pq_average` (what Detectron2's
`COCOPanopticEvaluator` runs): a prediction matches a ground-truth segment of the same category
when IoU > 0.5, with union = pred area + gt area - intersection - (pred ∩ VOID); gt areas come
from the gt JSON, pred areas are counted in the PNG; crowd gt are never matched; an unmatched
non-crowd gt is a FN; an unmatched prediction is ignored when more than half of it lies in VOID
plus the same category's crowd region, else it is a FP. Per category PQ = ΣIoU / (TP + FP/2 +
FN/2), SQ = ΣIoU / TP, RQ = TP / (TP + FP/2 + FN/2), averaged over the categories with
TP + FP + FN > 0, for All, Things and Stuff. `sem_seg_metrics` reproduces `SemSegEvaluator`:
a (K+1)^2 confusion matrix (the ignore label as class K), mIoU / fwIoU / mACC / pACC over the
classes with ground-truth pixels; predictions on ignored pixels are not counted.
No maintained PyPI package reproduces panopticapi (it is installed from its git repository),
so this is an implementation of its definition, tested on hand-made cases.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from jax_rcnn.data.panoptic import id2rgb, rgb2id

VOID = 0
OFFSET = 256 * 256 * 256
__all__ = ["id2rgb", "rgb2id"]  # re-exported: panopticapi's PNG encoding


@dataclasses.dataclass
class PQStatCat:
    """Accumulators of one category: summed IoU of the matches, TP, FP, FN."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


class PQStat:
    """panopticapi's `PQStat`: per-category accumulators over images."""

    def __init__(self):
        self.per_cat: dict[int, PQStatCat] = {}

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.per_cat.setdefault(int(category_id), PQStatCat())

    def average(
        self, categories: Mapping[int, Mapping], isthing: bool | None = None
    ) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """PQ, SQ, RQ (fractions, not percent) and the category count n over `categories`
        (`{id: {"isthing": 0/1, ...}}`), all of them or only things / stuff.

        Raises:
          ZeroDivisionError: no category has any TP, FP or FN (as panopticapi).
        """
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for label, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            s = self[label]
            if s.tp + s.fp + s.fn == 0:
                per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = s.tp + 0.5 * s.fp + 0.5 * s.fn
            pq_c, rq_c = s.iou / denominator, s.tp / denominator
            sq_c = s.iou / s.tp if s.tp else 0.0
            per_class[label] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_compute_single_image(
    stat: PQStat,
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping],
    categories: Mapping[int, Mapping],
    image_name: str = "",
) -> None:
    """Adds one image to `stat` (panopticapi's `pq_compute_single_core` body).

    Args:
      stat: the accumulators.
      gt_ids: `int[H, W]` ground-truth segment id per pixel (0 = VOID).
      gt_segments: gt `segments_info`: `{"id", "category_id", "iscrowd", "area"}` each.
      pred_ids: `int[H, W]` predicted segment id per pixel (0 = VOID).
      pred_segments: predicted `segments_info`: `{"id", "category_id"}` each.
      categories: `{category_id: {"isthing": 0/1, ...}}`.
      image_name: named in errors.

    Raises:
      KeyError: a predicted PNG segment missing from its JSON, a JSON segment missing from the
        PNG, or an unknown category (panopticapi's errors, naming the image).
    """
    gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
    pred_segms = {int(s["id"]): dict(s) for s in pred_segments}
    pred_left = set(pred_segms)
    labels, counts = np.unique(pred_ids, return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(
                f"{image_name}: segment {label} is in the predicted PNG and not in its JSON"
            )
        pred_segms[label]["area"] = count
        pred_left.discard(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(
                f"{image_name}: segment {label} has unknown category_id "
                f"{pred_segms[label]['category_id']}"
            )
    if pred_left:
        raise KeyError(
            f"{image_name}: segments {sorted(pred_left)} are in the predicted JSON and not in "
            "its PNG"
        )

    joint = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
    pairs, inter = np.unique(joint, return_counts=True)
    overlap = {
        (int(p // OFFSET), int(p % OFFSET)): int(c)
        for p, c in zip(pairs.tolist(), inter.tolist(), strict=True)
    }

    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in overlap.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt, pred = gt_segms[gt_label], pred_segms[pred_label]
        if gt["iscrowd"] == 1 or gt["category_id"] != pred["category_id"]:
            continue
        union = pred["area"] + gt["area"] - intersection - overlap.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            s = stat[gt["category_id"]]
            s.tp += 1
            s.iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_by_cat = {}
    for gt_label, gt in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt["iscrowd"] == 1:
            crowd_by_cat[gt["category_id"]] = gt_label
            continue
        stat[gt["category_id"]].fn += 1

    for pred_label, pred in pred_segms.items():
        if pred_label in pred_matched:
            continue
        ignored = overlap.get((VOID, pred_label), 0)
        if pred["category_id"] in crowd_by_cat:
            ignored += overlap.get((crowd_by_cat[pred["category_id"]], pred_label), 0)
        if ignored / pred["area"] > 0.5:
            continue
        stat[pred["category_id"]].fp += 1


def pq_results(stat: PQStat, categories: Mapping[int, Mapping]) -> dict[str, float]:
    """Detectron2's `COCOPanopticEvaluator` numbers (percent): PQ, SQ, RQ for All, Things
    (`_th`) and Stuff (`_st`); a group without any category counted is left out."""
    out = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        try:
            res, _ = stat.average(categories, isthing)
        except ZeroDivisionError:
            continue
        out.update({f"PQ{suffix}": 100 * res["pq"], f"SQ{suffix}": 100 * res["sq"]})
        out[f"RQ{suffix}"] = 100 * res["rq"]
    return out


def pq_compute(
    gt_json: str | os.PathLike,
    pred_json: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
) -> dict[str, float]:
    """panopticapi's `pq_compute` on COCO panoptic files: JSONs with `annotations` (each
    `image_id`, `file_name`, `segments_info`) and the PNG folders (default: next to the JSON,
    named like it without `.json`). Returns `pq_results`.

    Raises:
      KeyError: a predicted image without an annotation, or the errors of
        `pq_compute_single_image`.
    """
    gt = json.loads(open(gt_json).read())
    pred = json.loads(open(pred_json).read())
    gt_folder = gt_folder or os.path.splitext(os.fspath(gt_json))[0]
    pred_folder = pred_folder or os.path.splitext(os.fspath(pred_json))[0]
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    stat = PQStat()
    for ann in gt["annotations"]:
        if ann["image_id"] not in preds:
            raise KeyError(f"{pred_json}: no prediction for image id {ann['image_id']}")
        p = preds[ann["image_id"]]
        gt_ids = rgb2id(np.asarray(Image.open(os.path.join(gt_folder, ann["file_name"]))))
        pred_png = os.path.join(pred_folder, p["file_name"])
        pred_ids = rgb2id(np.asarray(Image.open(pred_png)))
        pq_compute_single_image(
            stat, gt_ids, ann["segments_info"], pred_ids, p["segments_info"], categories, pred_png
        )
    return pq_results(stat, categories)


def sem_seg_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int):
    """`i64[K+1, K+1]` confusion matrix `[pred, gt]` of one image (`SemSegEvaluator.process`):
    `pred int[H, W]` in [0, K), `gt int[H, W]` with `ignore_label` counted as class K."""
    gt = np.asarray(gt, np.int64).copy()
    gt[gt == ignore_label] = num_classes
    n = num_classes + 1
    flat = n * np.asarray(pred, np.int64).reshape(-1) + gt.reshape(-1)
    return np.bincount(flat, minlength=n * n).reshape(n, n)


def sem_seg_metrics(conf: np.ndarray, class_names: Sequence[str] = ()) -> dict[str, float]:
    """`SemSegEvaluator.evaluate` on a summed confusion matrix: mIoU, fwIoU, mACC, pACC and
    per-class `IoU-{name}` / `ACC-{name}` (percent; NaN for a class without gt pixels)."""
    acc = np.full(conf.shape[0] - 1, np.nan)
    iou = np.full(conf.shape[0] - 1, np.nan)
    tp = conf.diagonal()[:-1].astype(float)
    pos_gt = conf[:-1, :-1].sum(axis=0).astype(float)
    pos_pred = conf[:-1, :-1].sum(axis=1).astype(float)
    class_weights = pos_gt / pos_gt.sum()
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    res = {
        "mIoU": 100 * iou[iou_valid].sum() / iou_valid.sum(),
        "fwIoU": 100 * (iou[iou_valid] * class_weights[iou_valid]).sum(),
        "mACC": 100 * acc[acc_valid].sum() / acc_valid.sum(),
        "pACC": 100 * tp.sum() / pos_gt.sum(),
    }
    names = list(class_names) or [str(i) for i in range(len(tp))]
    for i, name in enumerate(names):
        res[f"IoU-{name}"] = 100 * iou[i]
        res[f"ACC-{name}"] = 100 * acc[i]
    return {k: float(v) for k, v in res.items()}


class PanopticEvaluator:
    """Detectron2's `COCOPanopticEvaluator` + `SemSegEvaluator` for per-image predictions.

    Ground truth: a COCO panoptic JSON and its PNG folder (dataset category ids; `isthing` from
    its categories), and optionally each image's semantic PNG (`panoptic_separated` labels:
    things 0, stuff 1..S, ignored 255). Predictions: `panoptic_seg` + `segments_info` with
    contiguous ids (things 0..T-1, stuff 1..S), as `jax_rcnn.panoptic` gives them; they are
    mapped back to the dataset ids (Detectron2's `_convert_category_id`) before `pq_compute`'s
    matching. Single process (no gathering across hosts).

    Args:
      panoptic_json: gt COCO panoptic JSON.
      png_root: its PNG folder.
      thing_contiguous_to_id: contiguous thing id -> dataset category id.
      stuff_contiguous_to_id: semantic label (1..S) -> dataset category id.
      num_sem_classes: K of the semantic metrics (S + 1); 0 = no semantic metrics.
      sem_seg_files: image id -> semantic gt PNG (needed for the semantic metrics).
      sem_class_names: names by semantic label (per-class IoU keys).
    """

    def __init__(
        self,
        panoptic_json: str | os.PathLike,
        png_root: str | os.PathLike,
        *,
        thing_contiguous_to_id: Mapping[int, int],
        stuff_contiguous_to_id: Mapping[int, int],
        num_sem_classes: int = 0,
        sem_seg_files: Mapping[int, str] | None = None,
        sem_class_names: Sequence[str] = (),
        ignore_label: int = 255,
    ):
        with open(panoptic_json) as f:
            gt = json.load(f)
        self._png_root = os.fspath(png_root)
        self._gt = {int(a["image_id"]): a for a in gt["annotations"]}
        self.categories = {int(c["id"]): c for c in gt["categories"]}
        self._things = dict(thing_contiguous_to_id)
        self._stuff = dict(stuff_contiguous_to_id)
        self._num_sem = int(num_sem_classes)
        self._sem_files = dict(sem_seg_files or {})
        self._sem_names = tuple(sem_class_names)
        self._ignore = int(ignore_label)
        self.reset()

    def reset(self) -> None:
        """Forgets every processed image."""
        self.stat = PQStat()
        self.conf = np.zeros((self._num_sem + 1,) * 2, np.int64)
        self.num_images = 0

    def process(
        self,
        image_id: int,
        panoptic_seg: np.ndarray,
        segments_info: Sequence[Mapping],
        sem_seg_labels: np.ndarray | None = None,
    ) -> None:
        """Adds one image: `panoptic_seg i32[H0, W0]`, its `segments_info` (contiguous ids),
        and optionally the semantic argmax `i32[H0, W0]`.

        Raises:
          KeyError: an image id without ground truth.
        """
        image_id = int(image_id)
        if image_id not in self._gt:
            raise KeyError(f"image id {image_id} has no panoptic ground truth")
        ann = self._gt[image_id]
        path = os.path.join(self._png_root, ann["file_name"])
        gt_ids = rgb2id(np.asarray(Image.open(path).convert("RGB")))
        pred_segments = [
            {
                "id": s["id"],
                "category_id": (self._things if s["isthing"] else self._stuff)[
                    int(s["category_id"])
                ],
            }
            for s in segments_info
        ]
        pq_compute_single_image(
            self.stat, gt_ids, ann["segments_info"], panoptic_seg, pred_segments,
            self.categories, path,
        )  # fmt: skip
        if sem_seg_labels is not None and self._num_sem and image_id in self._sem_files:
            sem = np.asarray(Image.open(self._sem_files[image_id]).convert("L"))
            self.conf += sem_seg_confusion(sem_seg_labels, sem, self._num_sem, self._ignore)
        self.num_images += 1

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ_st", ...}, "sem_seg": {"mIoU",
        "fwIoU", "mACC", "pACC", "IoU-<name>", ...}}` in percent (`sem_seg` when measured)."""
        out = {"panoptic_seg": pq_results(self.stat, self.categories)}
        if self.conf[:-1, :-1].sum():
            out["sem_seg"] = sem_seg_metrics(self.conf, self._sem_names)
        return out


class SemSegEvaluator:
    """Detectron2's `SemSegEvaluator` for per-image semantic argmaxes against gt PNGs (labels
    0..K-1, `ignore_label` ignored). Single process.

    Args:
      num_classes: K.
      class_names: names by label (per-class keys).
      ignore_label: the gt label not counted (255).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] = (), ignore_label: int = 255):
        self._num = int(num_classes)
        self._names = tuple(class_names)
        self._ignore = int(ignore_label)
        self.reset()

    def reset(self) -> None:
        """Forgets every processed image."""
        self.conf = np.zeros((self._num + 1,) * 2, np.int64)

    def process(self, sem_seg_labels: np.ndarray, gt_png: str) -> None:
        """Adds one image: its argmax `int[H0, W0]` and its gt PNG (read as "L")."""
        gt = np.asarray(Image.open(gt_png).convert("L"))
        self.conf += sem_seg_confusion(sem_seg_labels, gt, self._num, self._ignore)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", ...}}` (percent)."""
        return {"sem_seg": sem_seg_metrics(self.conf, self._names)}
