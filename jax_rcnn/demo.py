"""Draw a model's predictions on photos: `python -m jax_rcnn.demo`.

    python -m jax_rcnn.demo --config configs/mask_rcnn_R_50_FPN_1x.py \\
        --weights model_final.pkl --input photo.jpg --output out.png
    python -m jax_rcnn.demo --config config.yaml --weights model_final.pkl \\
        --input a.jpg b.jpg --output out.png --class-names person,chair,"dining table",bottle

`--config` takes one of our Python configs (`path.py[:variant]`) or a Detectron2 YAML. Boxes,
class names, scores, mask overlays and keypoint skeletons (keypoint models: COCO's person skeleton
for 17 keypoints, keypoints scoring above 0.05) of detections scoring at least `--score-thresh`
are drawn;
several inputs are tiled into one picture. An RPN-only model (`ProposalNetwork`) draws its first
20 proposals, scored by the sigmoid of their objectness logits. A `PanopticFPN` draws its panoptic
segments (stuff labelled with `--stuff-names`) under the instances' boxes; a
`SemanticSegmentor` its semantic labels.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jax_rcnn import visualize
from jax_rcnn.config import load_config, num_classes
from jax_rcnn.config_from_detectron2 import from_detectron2
from jax_rcnn.data.coco import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON
from jax_rcnn.data.transforms import read_image
from jax_rcnn.predictor import Predictor

COCO_NUM_CLASSES = 80
NUM_PROPOSALS_DRAWN = 20  # an RPN-only model (ProposalNetwork): its first proposals


def skeleton_for(keypoints) -> tuple[tuple[int, int], ...]:
    """0-based skeleton pairs to draw: COCO's person skeleton for 17 keypoints, else none."""
    if keypoints is None or np.shape(keypoints)[1:2] != (len(COCO_PERSON_KEYPOINT_NAMES),):
        return ()
    return tuple((a - 1, b - 1) for a, b in COCO_PERSON_SKELETON)


def class_names_for(config, override: str | None) -> tuple[str, ...]:
    """Class names: `--class-names`, else `config.data.class_names`, else COCO's for 80 classes."""
    if override:
        return tuple(n.strip() for n in override.split(","))
    if config.data.class_names:
        return tuple(config.data.class_names)
    if num_classes(config) == COCO_NUM_CLASSES:
        from configs import common  # the repository's configs package (on sys.path via load)

        return common.COCO_CLASS_NAMES
    return ()


def _draw_segments(rgb: np.ndarray, out: dict, stuff_names) -> tuple[np.ndarray, dict]:
    """The panoptic segments (PanopticFPN) or the semantic labels (SemanticSegmentor, one
    segment per label) filled in; the instances' masks are then not drawn again."""
    out = dict(out)
    if "panoptic_seg" in out:
        seg, info = out["panoptic_seg"], out["segments_info"]
    else:
        labels = out["sem_seg_labels"]
        seg = labels + 1
        info = [
            {"id": int(c) + 1, "isthing": False, "category_id": int(c)} for c in np.unique(labels)
        ]
    out["segments_info"] = info
    out.pop("masks", None)
    picture = visualize.draw_panoptic(rgb, seg, info, stuff_names=stuff_names)
    return np.asarray(picture), out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jax_rcnn.demo", description=__doc__)
    parser.add_argument("--config", required=True, help="configs/x.py[:variant] or a D2 YAML")
    parser.add_argument("--weights", required=True, help="Detectron2 .pkl checkpoint")
    parser.add_argument("--input", required=True, nargs="+", help="image files")
    parser.add_argument("--output", required=True, help="output picture (.png/.jpg)")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--class-names", default=None, help="comma-separated, by class id")
    parser.add_argument(
        "--stuff-names", default=None, help="semantic class names, comma-separated, by label"
    )
    args = parser.parse_args(argv)
    stuff_names = tuple(n.strip() for n in args.stuff_names.split(",")) if args.stuff_names else ()

    path = args.config.split(":")[0]
    config = from_detectron2(path) if path.endswith((".yaml", ".yml")) else load_config(args.config)
    names = class_names_for(config, args.class_names)
    predictor = Predictor(config, weights=args.weights)
    images = [read_image(p, "BGR") for p in args.input]
    outputs = predictor.batch(images)
    pictures = []
    for path_in, image, out in zip(args.input, images, outputs, strict=True):
        if "objectness_logits" in out:  # ProposalNetwork: the top proposals, score = sigmoid
            logits = out.pop("objectness_logits")[:NUM_PROPOSALS_DRAWN]
            out["boxes"] = out.pop("proposal_boxes")[:NUM_PROPOSALS_DRAWN]
            out["scores"] = 1.0 / (1.0 + np.exp(-logits))
            out["classes"] = np.zeros(len(logits), np.int32)
            names = ("proposal",)
        rgb = image[..., ::-1]  # BGR -> RGB
        if "sem_seg_labels" in out:  # PanopticFPN / SemanticSegmentor: segments underneath
            rgb, out = _draw_segments(rgb, out, stuff_names)
            print(f"{path_in}: {len(out['segments_info'])} segments")
        if "scores" not in out:
            pictures.append(Image.fromarray(rgb))
            continue
        shown = int((out["scores"] >= args.score_thresh).sum())
        print(f"{path_in}: {len(out['scores'])} detections, {shown} drawn")
        pictures.append(
            visualize.draw_instances(
                rgb,
                out["boxes"],
                out["classes"],
                out["scores"],
                out.get("masks"),
                class_names=names,
                score_thresh=args.score_thresh,
                keypoints=out.get("keypoints"),
                skeleton=skeleton_for(out.get("keypoints")),
            )
        )
    picture = pictures[0] if len(pictures) == 1 else visualize.grid(pictures, columns=2)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    picture.save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
