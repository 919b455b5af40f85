"""Writes the LVIS evaluation fixture: a small LVIS-format ground truth, detections, and the
numbers the official `lvis` package (0.5.3, LVISResults + LVISEval, max_dets 300, as Detectron2's
LVISEvaluator calls it) reports for them. Not run by the tests; they read its output.

    pip install --no-deps --target /tmp/lvispkg lvis==0.5.3
    PYTHONPATH=/tmp/lvispkg python tests/data/lvis/make_reference.py

`lvis/__init__.py` imports its visualiser (cv2, matplotlib); both are stubbed, evaluation does
not use them. lvis 0.5.3 uses `np.float`, removed in NumPy 1.24; the alias is restored here.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

for name in ("cv2", "matplotlib", "matplotlib.pyplot", "matplotlib.patches"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["matplotlib.patches"].Polygon = object
if not hasattr(np, "float"):  # lvis 0.5.3 (the last release) still uses NumPy's removed alias
    np.float = float  # noqa: NPY001
from lvis import LVIS, LVISEval, LVISResults  # noqa: E402

OUT = Path(__file__).resolve().parent
FREQ = ["f", "f", "c", "c", "c", "r", "r", "r"]


def _rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make(seed: int = 0):
    rng = np.random.default_rng(seed)
    cats = [
        {"id": k + 1, "name": f"thing_{k}", "synonyms": [f"thing_{k}"], "frequency": FREQ[k]}
        for k in range(len(FREQ))
    ]
    images, anns = [], []
    for i in range(14):
        h, w = int(rng.integers(90, 360)), int(rng.integers(90, 360))
        img_id = 10 + i
        present = set()
        for _ in range(int(rng.integers(0, 6))):
            k = int(rng.choice(len(FREQ), p=[0.3, 0.25, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05]))
            s = float(rng.choice([0.12, 0.3, 0.7]))
            bw, bh = float(rng.uniform(5, w * s)), float(rng.uniform(5, h * s))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": k + 1,
                    "bbox": [x, y, bw, bh],
                    "segmentation": _rect(x, y, bw, bh),
                    "area": bw * bh,
                }
            )
            present.add(k + 1)
        absent = [c for c in range(1, len(FREQ) + 1) if c not in present]
        neg = sorted(int(c) for c in rng.choice(absent, size=min(2, len(absent)), replace=False))
        nexh = sorted(int(c) for c in present if rng.random() < 0.3)
        images.append(
            {
                "id": img_id,
                "height": h,
                "width": w,
                "coco_url": f"http://images.cocodataset.org/val2017/{img_id:012d}.jpg",
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": nexh,
            }
        )
    for c in cats:
        c["image_count"] = len({a["image_id"] for a in anns if a["category_id"] == c["id"]})
        c["instance_count"] = sum(a["category_id"] == c["id"] for a in anns)
    gt = {"images": images, "annotations": anns, "categories": cats}

    results = []
    by_img = {im["id"]: im for im in images}
    for a in anns:  # a detection near most instances, sometimes with the wrong class
        if rng.random() < 0.15:
            continue
        x, y, bw, bh = a["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
        k = a["category_id"] if rng.random() < 0.85 else int(rng.integers(1, len(FREQ) + 1))
        results.append(_det(by_img[a["image_id"]], k, [x, y, bw, bh] + jitter, rng))
    for im in images:  # false positives in any class (some not in the image's pos / neg sets)
        n = 320 if im["id"] == 10 else int(rng.integers(0, 8))  # image 10 exceeds max_dets 300
        for _ in range(n):
            bw, bh = float(rng.uniform(5, 60)), float(rng.uniform(5, 60))
            box = [
                float(rng.uniform(0, im["width"] - bw)),
                float(rng.uniform(0, im["height"] - bh)),
            ]
            k = int(rng.integers(1, len(FREQ) + 1))
            lo = (
                0.5 if im["id"] == 10 else 0.05
            )  # image 10: its weaker true positives fall past 300
            results.append(_det(im, k, box + [bw, bh], rng, score_lo=lo, score_hi=0.6 + lo / 2))
    return gt, results


def _det(im, k, xywh, rng, score_lo=0.05, score_hi=1.0):
    x, y, bw, bh = (float(v) for v in xywh)
    x, y = max(x, 0.0), max(y, 0.0)
    bw, bh = min(bw, im["width"] - x), min(bh, im["height"] - y)
    mask = np.zeros((im["height"], im["width"]), np.uint8, order="F")
    mask[int(y) : int(np.ceil(y + bh)), int(x) : int(np.ceil(x + bw))] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    score = round(float(rng.uniform(score_lo, score_hi)), 6)
    return {
        "image_id": im["id"],
        "category_id": k,
        "bbox": [round(v, 4) for v in (x, y, bw, bh)],
        "score": score,
        "segmentation": rle,
    }


def evaluate(gt_path: Path, results: list[dict], iou_type: str) -> dict[str, float]:
    """Detectron2's `_evaluate_predictions_on_lvis` (metrics x100), with the official package."""
    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    lvis_gt = LVIS(str(gt_path))
    lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=300), iou_type)
    lvis_eval.run()
    out = lvis_eval.get_results()
    return {k: float(v) * 100 for k, v in out.items()}


def main():
    gt, results = make()
    gt_path = OUT / "lvis_gt.json"
    gt_path.write_text(json.dumps(gt))
    (OUT / "lvis_results.json").write_text(json.dumps(results))
    import lvis

    reference = {
        "lvis_version": getattr(lvis, "__version__", "0.5.3"),
        "bbox": evaluate(gt_path, results, "bbox"),
        "segm": evaluate(gt_path, results, "segm"),
    }
    (OUT / "lvis_reference.json").write_text(json.dumps(reference, indent=1))
    print(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
