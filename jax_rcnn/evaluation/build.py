"""Which evaluator scores a run (host side): Detectron2's choice of `DatasetEvaluator`.

Detectron2's `train_net.py:build_evaluator` picks evaluators from the dataset's
`evaluator_type`; jax_rcnn picks them from the meta-architecture and the test split's format:

* `ProposalNetwork`: `ProposalEvaluator`, `box_proposals` AR@100, ... (what Detectron2's
  COCOEvaluator reports for proposals);
* an LVIS test split (`meta["format"] == "lvis"`): `LVISEvaluator`, `bbox` (+ `segm`) LVIS AP
  with APr / APc / APf;
* `SemanticSegmentor`: `SemSegEvaluator`, `sem_seg` mIoU / fwIoU / mACC / pACC;
* anything else: `COCOEvaluator`, `bbox` (+ `segm` with masks, + `keypoints` with keypoints);

plus, for a `PanopticFPN` whose test split has panoptic ground truth, a `PanopticEvaluator`
(`panoptic_seg`: PQ / SQ / RQ, and the semantic metrics) next to the COCO one, in
single-process runs only (its per-image results are not gathered across hosts).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def gt_json(config) -> str:
    """Path of the test split's ground-truth json (COCO or LVIS format).

    Args:
      config: jax_rcnn config; `config.data.source` is "coco", "shapes" or "people" (the
        built-in datasets are generated if they are not there yet).

    Raises:
      NotImplementedError: another source (no ground-truth json to evaluate against).
    """
    d = config.data
    if d.source == "coco":
        from jax_rcnn.data.loader import coco_paths

        return coco_paths(config, "test")["json"]
    if d.source == "shapes":
        from jax_rcnn.data.shapes import config_paths

        return config_paths(config)["val_json"]
    if d.source == "people":
        from jax_rcnn.data.people import config_paths as people_paths

        return people_paths(config)["val_json"]
    raise NotImplementedError(f"COCO evaluation needs a gt json; config.data.source={d.source!r}")


def build_evaluators(
    config,
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    *,
    output_dir: str | os.PathLike | None = None,
    process_count: int = 1,
) -> tuple[Any, Any]:
    """The evaluators of a run on its test split (see the module docstring for the choice).

    Args:
      config: jax_rcnn config (`model.meta_architecture`, `model.mask_on`, `keypoint_on`,
        `sem_seg_head.num_classes`, `test.keypoint_oks_sigmas`, `data.*` for the gt json).
      records: the test split's records (`load_coco_json`; `sem_seg_file_name` for semantic
        ground truth).
      meta: the split's metadata (`thing_dataset_id_to_contiguous_id`; `format`;
        `panoptic_json` / `panoptic_png` for panoptic ground truth).
      output_dir: where the main evaluator writes its results files (None: nowhere).
      process_count: processes taking part (`jax.process_count()`); the panoptic evaluator is
        built only for 1.

    Returns:
      `(evaluator, panoptic_evaluator or None)`.

    Raises:
      ValueError: a `SemanticSegmentor` whose test records lack `sem_seg_file_name`.
    """
    from jax_rcnn.evaluation import COCOEvaluator, ProposalEvaluator

    meta_architecture = config.model.meta_architecture
    mask_on = bool(config.model.mask_on)
    to_cat = {v: int(k) for k, v in meta["thing_dataset_id_to_contiguous_id"].items()}
    if meta_architecture == "ProposalNetwork":
        # Detectron2's COCOEvaluator sees "proposals": box-proposal AR
        evaluator = ProposalEvaluator(gt_json(config), output_dir=output_dir)
    elif meta.get("format") == "lvis":  # Detectron2's LVISEvaluator (federated LVIS AP)
        from jax_rcnn.evaluation.lvis_evaluation import LVISEvaluator

        evaluator = LVISEvaluator(
            gt_json(config),
            output_dir=output_dir,
            contiguous_to_dataset_id=to_cat,
            tasks=("bbox", "segm") if mask_on else ("bbox",),
        )
    elif meta_architecture == "SemanticSegmentor":  # Detectron2's SemSegEvaluator alone
        from jax_rcnn.evaluation.panoptic_evaluation import SemSegEvaluator

        if any("sem_seg_file_name" not in r for r in records):
            raise ValueError(
                "a SemanticSegmentor needs semantic ground truth (sem_seg_file_name) for every "
                "test image: the panoptic shapes (data.shapes.num_stuff_classes) or a "
                "*_panoptic_separated dataset"
            )
        evaluator = SemSegEvaluator(config.model.sem_seg_head.num_classes)
    else:
        keypoint_on = bool(config.model.get("keypoint_on", False))
        tasks = ("bbox",) + (("segm",) if mask_on else ()) + (("keypoints",) if keypoint_on else ())
        evaluator = COCOEvaluator(
            gt_json(config),
            output_dir=output_dir,
            contiguous_to_dataset_id=to_cat,
            tasks=tasks,
            kpt_oks_sigmas=tuple(config.test.get("keypoint_oks_sigmas", ())),
        )
    panoptic = None
    if meta_architecture != "SemanticSegmentor":
        panoptic = _panoptic_evaluator(config, records, meta, to_cat, process_count)
    return evaluator, panoptic


def _panoptic_evaluator(config, records, meta, to_cat, process_count: int):
    """PQ and semantic metrics for a PanopticFPN whose test split has panoptic ground truth
    (`meta["panoptic_json"]`); None otherwise or with several processes (not gathered)."""
    if config.model.meta_architecture != "PanopticFPN" or "panoptic_json" not in meta:
        return None
    if process_count > 1:
        logger.warning("PQ evaluation runs in single-process runs only; skipped")
        return None
    from jax_rcnn.data.panoptic import panoptic_meta
    from jax_rcnn.evaluation.panoptic_evaluation import PanopticEvaluator

    with open(meta["panoptic_json"]) as f:
        pan = panoptic_meta(json.load(f)["categories"], meta["panoptic_json"])
    return PanopticEvaluator(
        meta["panoptic_json"],
        meta["panoptic_png"],
        thing_contiguous_to_id=to_cat,
        stuff_contiguous_to_id={v: k for k, v in pan["stuff_dataset_id_to_contiguous_id"].items()},
        num_sem_classes=config.model.sem_seg_head.num_classes,
        sem_seg_files={r["image_id"]: r["sem_seg_file_name"] for r in records},
        sem_class_names=pan["stuff_classes"],
    )
