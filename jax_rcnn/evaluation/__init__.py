"""jax_rcnn.evaluation: host-side COCO evaluation (NumPy + pycocotools, no JAX): box and mask AP,
box-proposal AR, panoptic PQ / SQ / RQ and semantic mIoU / fwIoU / accuracies."""

from jax_rcnn.evaluation.coco_evaluation import (
    COCOEvaluator,
    derive_coco_results,
    encode_masks,
    evaluate_coco_results,
    evaluate_predictions_on_coco,
    evaluate_results_file,
    instances_to_coco_json,
    load_coco,
)
from jax_rcnn.evaluation.panoptic_evaluation import (
    PQStat,
    pq_compute,
    pq_compute_single_image,
    pq_results,
    sem_seg_confusion,
    sem_seg_metrics,
)
from jax_rcnn.evaluation.proposal_evaluation import ProposalEvaluator, evaluate_box_proposals

__all__ = [
    "COCOEvaluator",
    "PQStat",
    "ProposalEvaluator",
    "derive_coco_results",
    "encode_masks",
    "evaluate_box_proposals",
    "evaluate_coco_results",
    "evaluate_predictions_on_coco",
    "evaluate_results_file",
    "instances_to_coco_json",
    "load_coco",
    "pq_compute",
    "pq_compute_single_image",
    "pq_results",
    "sem_seg_confusion",
    "sem_seg_metrics",
]
