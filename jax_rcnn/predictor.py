"""`Predictor`: Detectron2's `DefaultPredictor` for jax_rcnn.

    from jax_rcnn.config import from_detectron2
    from jax_rcnn.predictor import Predictor
    cfg = from_detectron2("config.yaml")            # or load_config("configs/x.py")
    predictor = Predictor(cfg, weights="model_final.pkl")
    out = predictor(image_bgr)                      # u8[H, W, 3] BGR
    outs = predictor.batch([img_a, img_b])          # images of different sizes

Each output is a dict of NumPy arrays in original-image pixels:
`boxes f32[D, 4]` xyxy, `scores f32[D]`, `classes i32[D]`, `masks bool[D, H, W]` for mask
models and `keypoints f32[D, K, 3]` (x, y, score; Detectron2's `pred_keypoints`) for keypoint
models, sorted by descending score. A `ProposalNetwork` (RPN-only) gives Detectron2's proposal
fields instead: `proposal_boxes f32[P, 4]` xyxy and `objectness_logits f32[P]` (raw logits),
sorted by descending logit. A `PanopticFPN` adds Detectron2's `sem_seg f32[K, H, W]` (semantic
logits at the original size), `sem_seg_labels i32[H, W]` (their argmax), `panoptic_seg i32[H,
W]` (0 = void, segment ids 1..) and `segments_info` (list of dicts, Detectron2's fields); a
`SemanticSegmentor` gives `sem_seg` and `sem_seg_labels` only (`jax_rcnn.panoptic`).

The test path is Detectron2's: ResizeShortestEdge(min_size_test, max_size_test) with Pillow's
bilinear filter on uint8, normalisation inside the model, zero padding after normalisation, then
`detector_postprocess` and `paste_masks_in_image` (threshold 0.5) back to the original image.
Padding follows `config.input.pad_mode`: "buckets" (a short fixed list of padded shapes, one
compile each) or "size_divisibility" (Detectron2's multiple of 32, one compile per shape; C4 and
DC5 have `size_divisibility = 0`: no padding at all, as Detectron2).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_rcnn import config as config_lib
from jax_rcnn import meta_arch, modeling, panoptic, postprocess
from jax_rcnn.checkpoint import detectron2 as d2_checkpoint
from jax_rcnn.compile import jit as compile_jit
from jax_rcnn.data import batching
from jax_rcnn.data import transforms as T

logger = logging.getLogger(__name__)


class Predictor:
    """Runs a jax_rcnn model on BGR images (see the module docstring).

    Args:
      config: a jax_rcnn config (`load_config`, `from_detectron2`); validated here.
      weights: a Detectron2 `.pkl` checkpoint; default `config.model.weights`.
      variables: already loaded model variables (instead of `weights`).
    """

    def __init__(self, config, weights: str | os.PathLike | None = None, variables=None):
        config_lib.validate(config)
        self.config = config
        self.model = modeling.build_model(config)
        if variables is None:
            path = weights if weights is not None else config.model.weights
            if not path:
                raise ValueError(
                    "Predictor needs weights: pass weights=... or set config.model.weights"
                )
            if not os.path.exists(path):
                raise FileNotFoundError(f"weights file not found: {os.fspath(path)!r}")
            abstract = modeling.abstract_variables(config)
            variables = d2_checkpoint.load_weights(path, config, abstract)
        self.variables = jax.tree.map(jnp.asarray, variables)
        self.num_traces = 0  # one per padded shape (bucket); see tests
        inference = meta_arch.get(config).inference

        def run(variables, images, image_sizes, original_sizes):
            self.num_traces += 1  # Python side effect: runs once per trace, not per call
            out = inference(
                self.model, variables, images, image_sizes, original_sizes, config=config
            )
            # ~21 MB per image of heatmap logits the Predictor does not return.
            return {k: v for k, v in out.items() if k != "keypoint_heatmaps"}

        self._run = compile_jit(run)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Detections for one `u8[H, W, 3]` BGR image, in its own pixel coordinates."""
        return self.batch([image])[0]

    def batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections for several images of any sizes.

        Images are grouped by padded shape and each group runs as one batch, so every image is
        padded exactly as it would be alone: its detections do not depend on its batch mates.
        """
        examples = [
            batching.make_test_example(T.check_image(img, f"images[{i}]"), self.config)
            for i, img in enumerate(images)
        ]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex["image"].shape, []).append(i)
        results: list[dict[str, np.ndarray] | None] = [None] * len(examples)
        for idx in groups.values():
            batch = batching.collate([examples[i] for i in idx])
            out = self._run(
                self.variables,
                jnp.asarray(batch["image"]),
                jnp.asarray(batch["image_size"]),
                jnp.asarray(batch["original_size"]),
            )
            out = jax.device_get(out)
            for j, i in enumerate(idx):
                original = tuple(int(s) for s in batch["original_size"][j])
                if "sem_seg_logits" in out:  # PanopticFPN, SemanticSegmentor
                    size = tuple(int(s) for s in batch["image_size"][j])
                    results[i] = panoptic.panoptic_for_image(out, j, size, original, self.config)
                else:
                    results[i] = postprocess.instances_for_image(out, j, original)
        return results  # type: ignore[return-value]
