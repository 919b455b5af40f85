"""COCO box-proposal recall (AR@100 / AR@1000, small/medium/large), host side (NumPy).

Parity: detectron2 ``evaluation/coco_evaluation.py`` -- ``COCOEvaluator._eval_box_proposals``
and ``_evaluate_box_proposals`` (Detectron's proposal recall, not pycocotools). Per image: the
proposals sorted by descending objectness logit; gt = the json's non-crowd annotations
(``bbox`` XYWH -> XYXY, no +1), kept when the annotation's ``area`` field (segment area, not box
area, in float32) lies in the inclusive range (all [0, 1e5²], small [0, 32²], medium [32², 96²],
large [96², 1e5²]); images with no non-crowd gt or no proposals are skipped *before* counting
their gt; the first ``limit`` proposals are kept; ``min(#proposals, #gt)`` greedy rounds each
record the gt best covered by any remaining proposal (float32 IoU, first index on ties) and
remove that proposal and that gt; unmatched gt record 0. ``recall(t) = #(IoU >= t) / num_pos``
for ``t = arange(0.5, 0.95 + 1e-5, 0.05)`` (float32) and ``AR = mean(recalls)`` (float32, summed
in PyTorch's order so that the last bit matches), reported x100
as ``AR@100``, ``ARs@100``, ... (NaN when ``num_pos == 0``, as Detectron2's 0/0).

Deliberate deviations, as in ``COCOEvaluator``: proposals arrive as padded batches with a
``valid`` mask and ``example_valid``; an image id processed twice raises.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Detectron2's area ranges (inclusive on both ends) and its metric-name suffixes.
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
AREA_SUFFIXES = {"all": "", "small": "s", "medium": "m", "large": "l"}
LIMITS = (100, 1000)


def recall_thresholds() -> np.ndarray:
    """`f32[10]`: Detectron2's IoU thresholds 0.5, 0.55, ..., 0.95 (`torch.arange(0.5, 0.95 +
    1e-5, 0.05, dtype=float32)`: each value computed in float64, then rounded to float32)."""
    return np.arange(0.5, 0.95 + 1e-5, 0.05, dtype=np.float64).astype(np.float32)


def _mean_f32(x: np.ndarray) -> np.float32:
    """Mean of a float32 vector summed like PyTorch's CPU `mean` (8 float32 lanes, then the
    lanes in order): the same last bit as Detectron2's `recalls.mean()` (0.9000001, not 0.9)."""
    lanes = np.zeros(8, np.float32)
    for i, v in enumerate(np.asarray(x, np.float32)):
        lanes[i % 8] = np.float32(lanes[i % 8] + v)
    total = np.float32(0)
    for v in lanes:
        total = np.float32(total + v)
    return np.float32(total / np.float32(len(x)))


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Detectron2's `pairwise_iou` in float32: `f32[N, 4]`, `f32[M, 4]` xyxy -> `f32[N, M]`.

    Example:
      >>> pairwise_iou(np.array([[0, 0, 2, 2.]]), np.array([[1, 0, 3, 2.]]))
      array([[0.33333334]], dtype=float32)
    """
    a = np.asarray(boxes1, np.float32)
    b = np.asarray(boxes2, np.float32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    wh = np.maximum(wh, np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    return np.where(inter > 0, iou, np.float32(0)).astype(np.float32)


def greedy_gt_overlaps(overlaps: np.ndarray) -> np.ndarray:
    """The IoU recorded per gt by Detectron2's greedy matching.

    Args:
      overlaps: `f32[N, G]` IoU of the N kept proposals with the G gt boxes.

    Returns:
      `f32[G]`: in round j (of min(N, G)), entry j is the best IoU of any remaining gt with
      any remaining proposal; the matched proposal and gt are then removed. The rest stay 0.
      (Entry order is the matching order, as in Detectron2; only the multiset matters.)
    """
    overlaps = np.array(overlaps, np.float32, copy=True)
    num_props, num_gt = overlaps.shape
    recorded = np.zeros(num_gt, np.float32)
    for j in range(min(num_props, num_gt)):
        best_prop = np.argmax(overlaps, axis=0)  # per gt: first proposal with the max
        best = overlaps[best_prop, np.arange(num_gt)]
        gt_ind = int(np.argmax(best))
        box_ind = int(best_prop[gt_ind])
        recorded[j] = overlaps[box_ind, gt_ind]
        overlaps[box_ind, :] = -1
        overlaps[:, gt_ind] = -1
    return recorded


def evaluate_box_proposals(
    proposals: Mapping[int, tuple[np.ndarray, np.ndarray]],
    gt: Mapping[int, tuple[np.ndarray, np.ndarray]],
    *,
    area: str = "all",
    limit: int | None = None,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Detectron2's `_evaluate_box_proposals` over a split.

    Args:
      proposals: image id -> (`f32[P, 4]` xyxy original px, `f32[P]` objectness logits).
      gt: image id -> (`f32[G, 4]` xyxy boxes of the non-crowd annotations, `f32[G]` their
        `area` fields); images without an entry have no gt.
      area: "all", "small", "medium" or "large".
      limit: proposals kept per image after sorting (None: all).
      thresholds: `f32[T]` IoU thresholds; default `recall_thresholds()`.

    Returns:
      `{"ar": f32 scalar, "recalls": f32[T], "thresholds": f32[T], "gt_overlaps": f32[N]
      (sorted ascending), "num_pos": int}`.

    Raises:
      ValueError: an unknown `area`.
    """
    if area not in AREA_RANGES:
        raise ValueError(f"area = {area!r}: not one of {tuple(AREA_RANGES)}")
    lo, hi = (np.float32(v) for v in AREA_RANGES[area])
    overlaps_all = []
    num_pos = 0
    for image_id, (boxes, logits) in proposals.items():
        gt_boxes, gt_areas = gt.get(image_id, (np.zeros((0, 4), np.float32), np.zeros(0)))
        if len(gt_boxes) == 0 or len(boxes) == 0:
            continue
        gt_areas = np.asarray(gt_areas, np.float32)
        gt_boxes = np.asarray(gt_boxes, np.float32)[(gt_areas >= lo) & (gt_areas <= hi)]
        num_pos += len(gt_boxes)
        if len(gt_boxes) == 0:
            continue
        order = np.argsort(-np.asarray(logits, np.float32), kind="stable")
        if limit is not None:
            order = order[:limit]
        overlaps_all.append(greedy_gt_overlaps(pairwise_iou(np.asarray(boxes)[order], gt_boxes)))
    gt_overlaps = np.sort(
        np.concatenate(overlaps_all) if overlaps_all else np.zeros(0, np.float32)
    ).astype(np.float32)
    thresholds = recall_thresholds() if thresholds is None else np.asarray(thresholds, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        recalls = np.array(
            [np.float32((gt_overlaps >= t).sum()) / np.float32(num_pos) for t in thresholds],
            np.float32,
        )
    return {
        "ar": _mean_f32(recalls),
        "recalls": recalls,
        "thresholds": thresholds,
        "gt_overlaps": gt_overlaps,
        "num_pos": num_pos,
    }


def load_proposal_gt(gt_json: str | os.PathLike) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> (`f32[G, 4]` xyxy, `f32[G]` area) of the non-crowd annotations of a json."""
    with open(gt_json) as f:
        dataset = json.load(f)
    gt: dict[int, tuple[list, list]] = {int(img["id"]): ([], []) for img in dataset["images"]}
    for ann in dataset.get("annotations", []):
        if ann.get("iscrowd", 0) != 0:
            continue
        x, y, w, h = ann["bbox"]
        boxes, areas = gt.setdefault(int(ann["image_id"]), ([], []))
        boxes.append([x, y, x + w, y + h])
        areas.append(ann["area"])
    return {
        k: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(a, np.float32))
        for k, (b, a) in gt.items()
    }


class ProposalEvaluator:
    """Accumulates padded batched proposals and computes Detectron2's box-proposal AR.

    Records are per image ``{"image_id", "boxes" (list of xyxy), "logits"}``, JSON-serialisable
    so hosts can gather them (:meth:`results` / :meth:`extend`, as ``COCOEvaluator``).

    Example:
        >>> evaluator = ProposalEvaluator("annotations.json", output_dir=None)  # doctest: +SKIP
        >>> evaluator.process(batch["image_id"], out["proposal_boxes"],  # doctest: +SKIP
        ...                   out["objectness_logits"], out["valid"], batch["example_valid"])
        >>> evaluator.evaluate()["box_proposals"]["AR@1000"]  # doctest: +SKIP
    """

    def __init__(self, gt_json: str | os.PathLike, *, output_dir: str | None = None):
        """Loads the ground truth of `gt_json`; `output_dir` receives `box_proposals.json`."""
        self._gt = load_proposal_gt(gt_json)
        self._output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        """Forgets every processed image."""
        self._records: dict[int, dict[str, Any]] = {}

    def _add(self, image_id: int, boxes: np.ndarray, logits: np.ndarray) -> None:
        if image_id not in self._gt:
            raise ValueError(f"image id {image_id} is not in the ground-truth json")
        if image_id in self._records:
            raise ValueError(f"image id {image_id} was already processed; it would count twice")
        self._records[image_id] = {
            "image_id": image_id,
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4).tolist(),
            "logits": np.asarray(logits, np.float32).reshape(-1).tolist(),
        }

    def process(
        self,
        image_ids: np.ndarray,
        proposal_boxes: np.ndarray,
        objectness_logits: np.ndarray,
        valid: np.ndarray,
        example_valid: np.ndarray | None = None,
    ) -> None:
        """Stores one padded batch of proposals.

        Args:
          image_ids: `i64[B]` COCO image ids.
          proposal_boxes: `f32[B, P, 4]` xyxy original px.
          objectness_logits: `f32[B, P]`.
          valid: `bool[B, P]` real proposals.
          example_valid: optional `bool[B]`; False marks a padding example (skipped).
        """
        image_ids = np.asarray(image_ids).reshape(-1)
        boxes = np.asarray(proposal_boxes, np.float32)
        logits = np.asarray(objectness_logits, np.float32)
        valid = np.asarray(valid, bool)
        if boxes.shape != (*valid.shape, 4) or logits.shape != valid.shape:
            raise ValueError(f"boxes {boxes.shape} / logits {logits.shape} != {valid.shape}")
        if example_valid is None:
            example_valid = np.ones(len(image_ids), bool)
        for b in np.flatnonzero(np.asarray(example_valid, bool).reshape(-1)):
            self._add(int(image_ids[b]), boxes[b][valid[b]], logits[b][valid[b]])

    def results(self) -> list[dict[str, Any]]:
        """The per-image records processed so far (JSON-serialisable)."""
        return list(self._records.values())

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Adds per-image records from :meth:`results` of other hosts."""
        for r in records:
            self._add(int(r["image_id"]), np.asarray(r["boxes"]), np.asarray(r["logits"]))

    def evaluate(self) -> dict[str, dict[str, float]]:
        """`{"box_proposals": {"AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", ...}}`
        in percent (Detectron2's keys), plus `num_images_evaluated`."""
        proposals = {
            k: (np.asarray(r["boxes"], np.float32).reshape(-1, 4), np.asarray(r["logits"]))
            for k, r in self._records.items()
        }
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "box_proposals.json"), "w") as f:
                json.dump(self.results(), f)
        res: dict[str, float] = {}
        for limit in LIMITS:
            for area, suffix in AREA_SUFFIXES.items():
                stats = evaluate_box_proposals(proposals, self._gt, area=area, limit=limit)
                res[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
        res["num_images_evaluated"] = float(len(self._records))
        logger.info("Proposal metrics: %s", {k: round(v, 3) for k, v in res.items()})
        return {"box_proposals": res}
