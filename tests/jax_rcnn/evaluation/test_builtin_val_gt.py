"""Ground truth fed back as detections scores AP 100 on the built-in dataset's val split,
through the same record loader the training and evaluation use."""

import math

import numpy as np

from jax_rcnn.data.coco import load_coco_json
from jax_rcnn.data.shapes import ensure_shapes_dataset
from jax_rcnn.evaluation import COCOEvaluator


def test_ground_truth_as_detections_scores_100_on_shapes_val(tmp_path):
    paths = ensure_shapes_dataset(tmp_path, num_train=4, num_val=40, seed=3)
    records, meta = load_coco_json(paths["val_json"], paths["val_images"])
    evaluator = COCOEvaluator(paths["val_json"], output_dir=str(tmp_path / "eval"))
    max_d = max(1, max(len(r["annotations"]) for r in records))
    assert any(not r["annotations"] for r in records)  # images without objects are evaluated too
    for r in records:
        anns = [a for a in r["annotations"] if not a.get("iscrowd", 0)]
        boxes = np.zeros((1, max_d, 4), np.float32)
        classes = np.zeros((1, max_d), np.int32)
        valid = np.zeros((1, max_d), bool)
        for j, a in enumerate(anns):
            boxes[0, j], classes[0, j], valid[0, j] = a["bbox"], a["category_id"], True
        rles = [[a["segmentation"] for a in anns]]
        evaluator.process(
            np.array([r["image_id"]]), boxes, np.ones((1, max_d), np.float32), classes, valid,
            masks=rles,
        )  # fmt: skip
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == 100.0, (task, results[task]["AP"])
        per_class = [v for k, v in results[task].items() if k.startswith("AP-")]
        assert len(per_class) == len(meta["thing_classes"])
        assert all(math.isnan(v) or abs(v - 100.0) < 1e-9 for v in per_class)
