"""jax_rcnn.training: the training losses as one call, and batches from Detectron2-style records.

    cfg = jax_rcnn.config.from_detectron2("mask_rcnn_R_50_FPN_1x.yaml")   # or configs/*.py
    variables = jax_rcnn.checkpoint.detectron2.load_weights(path, cfg, abstract_variables(cfg))
    batch = make_batch([{"image": bgr_u8, "annotations": [...]}], cfg, rng=0)
    step_losses = jax_rcnn.compile.jit(lambda v, b, k: losses(cfg, v, b, k))  # or jax.jit
    out = step_losses(variables, batch, jax.random.key(0))   # {"loss_rpn_cls": f32[], ...}
    grads = jax.grad(lambda p: sum(losses(cfg, {**variables, "params": p}, batch, key).values()))

`losses` is the `forward_train` of the config's meta-architecture (`jax_rcnn.meta_arch`) with the
model built from the config; the dictionary has Detectron2's names and values (`loss_rpn_cls`,
`loss_rpn_loc`, `loss_cls`, `loss_box_reg`, `loss_mask` for R-CNN; `loss_cls`, `loss_box_reg` for
RetinaNet, whose normaliser comes from `variables["loss_state"]` when given, else 100). Close
over `cfg` when jitting (configs are not hashable).
`jax_rcnn.compile.jit` is `jax.jit` with XLA:CPU's YNNPACK convolutions turned off for the
program (several times faster convolution gradients on CPU; the same as `jax.jit` elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import pycocotools.mask as mask_util

from jax_rcnn import meta_arch, modeling
from jax_rcnn.data import batching
from jax_rcnn.data import transforms as T

__all__ = ["losses", "make_batch"]


def losses(cfg, variables: dict[str, Any], batch: dict[str, Any], key: jax.Array) -> dict:
    """Detectron2's training losses of one batch (the model's `forward` in train mode).

    Args:
      cfg: the jax_rcnn config (static: close over it under `jit`).
      variables: `{"params", "frozen"[, "batch_stats"]}` for `cfg`; differentiate w.r.t.
        `variables["params"]`. BN statistics updates (norm "BN") are computed and dropped;
        use `forward_train(..., mutable=("batch_stats",))` to keep them.
      batch: `make_batch` / `jax_rcnn.data.batching.collate` output: `image u8[B, H, W, 3]`,
        `image_size i32[B, 2]`, `gt_boxes f32[B, G, 4]`, `gt_classes i32[B, G]`,
        `gt_valid bool[B, G]` and, for mask models, `gt_masks` (`u8[B, G, M, M]` box-relative,
        or `bool[B, G, Hm, Wm]` full-image bitmasks; see `jax_rcnn.targets.mask_targets`).
        Other keys are ignored.
      key: PRNG key of the step (RPN anchor and ROI sampling).

    Returns:
      `{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"[, "loss_mask"]}` (R-CNN) or
      `{"loss_cls", "loss_box_reg"}` (RetinaNet), `f32[]`.
    """
    model = modeling.build_model(cfg, train=True)
    mutable = ("batch_stats",) if "batch_stats" in variables else ()
    forward_train = meta_arch.get(cfg).forward_train
    out, _ = forward_train(model, variables, batch, key, config=cfg, mutable=mutable)
    return out


def _segmentation_for_mapper(segm: Any) -> Any:
    # A 2-D array is Detectron2's in-memory bitmask; the mapper takes RLE or polygons.
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(f"a bitmask segmentation must be 2-D [H, W], got {segm.shape}")
        return mask_util.encode(np.asfortranarray(segm.astype(np.uint8)))
    return segm


def make_batch(
    records: Sequence[dict],
    cfg,
    *,
    rng: np.random.Generator | int | None = None,
) -> dict[str, np.ndarray]:
    """A training batch from Detectron2-style records (resize, flip, pad, gt to static shapes).

    Each record is processed by `jax_rcnn.data.batching.make_train_example` (Detectron2's
    `DatasetMapper(is_train=True)`: `ResizeShortestEdge` over `cfg.input.min_size_train`,
    random flip, crowd removed, empty instances dropped, gt padded to `cfg.input.max_gt`,
    masks stored box-relative `u8[G, M, M]`) and the examples are stacked by `collate`.

    Args:
      records: dicts with
        * `"image"`: `u8[H, W, 3]` in `cfg.input.format` order (BGR by default), or
          `"file_name"`: a path to read (then `"height"` and `"width"` must match the file);
        * `"annotations"`: list of `{"bbox": [x1, y1, x2, y2] abs px (or with "bbox_mode" 1,
          XYWH), "category_id": contiguous id in [0, K), "segmentation": polygons, RLE or a
          `bool|u8[H, W]` bitmask, "iscrowd": 0}`;
        * optional `"image_id"` (default: the record's position).
      cfg: the jax_rcnn config.
      rng: `np.random.Generator`, seed, or None (fresh entropy); draws the short side and flip.

    Returns:
      dict of NumPy arrays with a leading B (`len(records)`): `image u8[B, H, W, 3]`,
      `image_size i32[B, 2]`, `gt_boxes f32[B, G, 4]`, `gt_classes i32[B, G]`,
      `gt_valid bool[B, G]`, `gt_masks u8[B, G, M, M]` (mask models), and the bookkeeping
      keys of `make_train_example`.
    """
    rng = np.random.default_rng(rng)
    examples = []
    for i, record in enumerate(records):
        rec = dict(record)
        rec.setdefault("image_id", i)
        if "image" in rec:
            rec["height"], rec["width"] = np.shape(rec["image"])[:2]
        elif "height" not in rec or "width" not in rec:
            shape = T.read_image(rec["file_name"], cfg.input.format).shape
            rec["height"], rec["width"] = shape[:2]
        rec["annotations"] = [
            {**a, "segmentation": _segmentation_for_mapper(a["segmentation"])}
            if "segmentation" in a
            else a
            for a in rec.get("annotations", [])
        ]
        examples.append(batching.make_train_example(rec, cfg, rng))
    return batching.collate(examples)
