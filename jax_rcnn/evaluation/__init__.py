"""jax_rcnn.evaluation: host-side COCO evaluation (NumPy + pycocotools, no JAX): box and mask AP,
box-proposal AR."""

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
from jax_rcnn.evaluation.proposal_evaluation import ProposalEvaluator, evaluate_box_proposals

__all__ = [
    "COCOEvaluator",
    "ProposalEvaluator",
    "derive_coco_results",
    "encode_masks",
    "evaluate_box_proposals",
    "evaluate_coco_results",
    "evaluate_predictions_on_coco",
    "evaluate_results_file",
    "instances_to_coco_json",
    "load_coco",
]
