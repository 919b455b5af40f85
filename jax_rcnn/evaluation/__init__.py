"""jax_rcnn.evaluation: host-side COCO evaluation (NumPy + pycocotools, no JAX)."""

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

__all__ = [
    "COCOEvaluator",
    "derive_coco_results",
    "encode_masks",
    "evaluate_coco_results",
    "evaluate_predictions_on_coco",
    "evaluate_results_file",
    "instances_to_coco_json",
    "load_coco",
]
