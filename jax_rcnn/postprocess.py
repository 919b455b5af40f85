"""Box-head and dense-head inference, and the mapping of detections back to the original image.

**Parity:** `fast_rcnn_inference_single_image` (`modeling/roi_heads/fast_rcnn.py`),
`DenseDetector._decode_multi_level_predictions` (`modeling/meta_arch/dense_detector.py`, see
`dense_inference`) and `detector_postprocess` (`modeling/postprocessing.py`). Detectron2 runs
`batched_nms` over the (proposal, class) pairs whose score exceeds the threshold, keyed by
class; NMS keyed by class never suppresses across classes, so it equals one NMS group per class
followed by a merge of the survivors by score, which is what we do with static shapes. As in
Detectron2, boxes are clipped to the resized image but *not* filtered for emptiness here;
`detector_postprocess` drops empty
boxes after rescaling to the original image. Deviation in representation only: detections are
padded to `topk_per_image` slots with `valid=False`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_rcnn import boxes as box_ops
from jax_rcnn import kernels
from jax_rcnn import masks as mask_ops


class Detections(NamedTuple):
    """Per-image detections sorted by descending score.

    Attributes:
      boxes: `f32[B, D, 4]` xyxy.
      scores: `f32[B, D]`.
      classes: `i32[B, D]` contiguous class ids 0..K-1.
      proposal_idx: `i32[B, D]` proposal each detection came from.
      valid: `bool[B, D]`.
    """

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    proposal_idx: jax.Array
    valid: jax.Array


def fast_rcnn_inference(
    pred_boxes: jax.Array,
    scores: jax.Array,
    proposal_valid: jax.Array,
    image_sizes: jax.Array,
    *,
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    backend: str = "auto",
    nms=None,
) -> Detections:
    """Score threshold, per-class NMS and top-k, for a batch of images.

    Args:
      pred_boxes: `f32[B, R, K*4]` class-specific (or `f32[B, R, 4]` class-agnostic) decoded
        boxes in resized-input pixels (`Box2BoxTransform.apply_deltas` of the box head).
      scores: `f32[B, R, K+1]` softmax probabilities, background last.
      proposal_valid: `bool[B, R]` real proposals.
      image_sizes: `i32[B, 2]` (h, w) of each resized image (boxes are clipped to it).
      score_thresh: keep (proposal, class) pairs with score > this.
      nms_thresh: per-class NMS IoU threshold.
      topk_per_image: D, detections kept per image.
      backend: NMS backend, see `jax_rcnn.kernels`.
      nms: a `jax_rcnn.research.TestNMS` (None: greedy NMS, Detectron2's).

    Returns:
      `Detections` with D = `topk_per_image` slots.
    """
    num_images, num_props = scores.shape[:2]
    num_classes = scores.shape[2] - 1
    finite = (
        jnp.all(jnp.isfinite(pred_boxes), axis=-1)
        & jnp.all(jnp.isfinite(scores), axis=-1)
        & proposal_valid
    )
    pred_boxes = jnp.where(finite[..., None], pred_boxes, 0.0)
    scores = jnp.where(finite[..., None], scores, 0.0)[..., :num_classes]  # [B, R, K]
    boxes = pred_boxes.reshape(num_images, num_props, -1, 4)
    heights = image_sizes[:, 0].astype(jnp.float32)[:, None, None]
    widths = image_sizes[:, 1].astype(jnp.float32)[:, None, None]
    boxes = box_ops.clip(boxes, heights, widths)
    boxes = jnp.broadcast_to(boxes, (num_images, num_props, num_classes, 4))
    candidate = finite[..., None] & (scores > score_thresh)  # [B, R, K]
    return nms_per_class(
        boxes.transpose(0, 2, 1, 3),
        scores.transpose(0, 2, 1),
        candidate.transpose(0, 2, 1),
        nms_thresh=nms_thresh,
        topk_per_image=topk_per_image,
        backend=backend,
        nms=nms,
    )


def nms_per_class(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    nms_thresh: float,
    topk_per_image: int,
    backend: str = "auto",
    nms=None,
) -> Detections:
    """Detectron2's `batched_nms` keyed by class, then the `topk_per_image` best survivors.

    NMS keyed by class never suppresses across classes, so it is one greedy NMS per (image,
    class) group followed by a merge of the survivors by score.

    Args:
      boxes: `f32[B, K, N, 4]` candidate boxes of each class (`f32[B, 1, N, 4]` broadcasts).
      scores: `f32[B, K, N]`.
      valid: `bool[B, K, N]` candidates taking part.
      nms_thresh: IoU threshold (suppress when > it).
      topk_per_image: D, detections kept per image.
      backend: NMS backend, see `jax_rcnn.kernels`.
      nms: a `jax_rcnn.research.TestNMS` run per (image, class) group; None: greedy NMS.
        The merge ranks by the scores it reports (Soft-NMS decays them).

    Returns:
      `Detections` with D slots; `proposal_idx` is the candidate index in [0, N).
    """
    num_images, num_classes, num_cand = scores.shape
    boxes = jnp.broadcast_to(boxes, (num_images, num_classes, num_cand, 4))
    max_keep = min(num_cand, topk_per_image)
    group_args = (
        boxes.reshape(num_images * num_classes, num_cand, 4),
        scores.reshape(num_images * num_classes, num_cand),
        valid.reshape(num_images * num_classes, num_cand),
    )
    if nms is None:
        keep, keep_valid = kernels.nms(
            *group_args, iou_threshold=nms_thresh, max_output=max_keep, backend=backend
        )
        keep = keep.reshape(num_images, num_classes, max_keep)
        kept_scores = jnp.take_along_axis(scores, keep, axis=2)
    else:
        keep, kept_scores, keep_valid = nms(
            *group_args, iou_threshold=nms_thresh, max_output=max_keep, backend=backend
        )
        keep = keep.reshape(num_images, num_classes, max_keep)
        kept_scores = kept_scores.reshape(num_images, num_classes, max_keep)
    kept_boxes = jnp.take_along_axis(boxes, keep[..., None], axis=2)

    def per_image(x):
        return x.reshape(num_images, num_classes * max_keep, *x.shape[3:])

    kept_scores, kept_boxes = per_image(kept_scores), per_image(kept_boxes)
    keep, keep_valid = per_image(keep), keep_valid.reshape(num_images, -1)
    kept_classes = jnp.broadcast_to(
        jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), max_keep)[None], keep.shape
    )

    num_out = min(topk_per_image, num_classes * max_keep)
    _, order = jax.lax.top_k(jnp.where(keep_valid, kept_scores, -jnp.inf), num_out)

    def take(x):
        idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
        out = jnp.take_along_axis(x, idx, axis=1)
        pad = topk_per_image - num_out
        return jnp.pad(out, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)) if pad else out

    valid = take(keep_valid)
    return Detections(
        boxes=jnp.where(valid[..., None], take(kept_boxes), 0.0),
        scores=jnp.where(valid, take(kept_scores), 0.0),
        classes=jnp.where(valid, take(kept_classes), 0),
        proposal_idx=jnp.where(valid, take(keep), 0).astype(jnp.int32),
        valid=valid,
    )


def dense_inference(
    cls_logits: list[jax.Array],
    box_deltas: list[jax.Array],
    anchors: list[jax.Array],
    *,
    box2box: box_ops.Box2BoxTransform,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    topk_per_image: int,
    backend: str = "auto",
    nms=None,
) -> Detections:
    """One-stage detections (Detectron2's `DenseDetector._decode_multi_level_predictions`).

    Per level: sigmoid of the `[A_l, K]` logits flattened anchor-major, keep the (anchor, class)
    pairs with score > `score_thresh` (strict), the top `min(topk_candidates, kept)` of them,
    decode their anchors' deltas (no clipping). Then all levels' candidates go through per-class
    NMS and the best `topk_per_image` are kept. Boxes are clipped later, by
    `detector_postprocess` (after NMS, unlike Fast R-CNN).

    Args:
      cls_logits: per level `f32[B, A_l, K]`.
      box_deltas: per level `f32[B, A_l, 4]`.
      anchors: per level `f32[A_l, 4]` xyxy.
      box2box: the box coder.
      score_thresh: `SCORE_THRESH_TEST`.
      topk_candidates: `TOPK_CANDIDATES_TEST`, per level.
      nms_thresh: `NMS_THRESH_TEST`.
      topk_per_image: `TEST.DETECTIONS_PER_IMAGE`.
      backend: NMS backend.
      nms: a `jax_rcnn.research.TestNMS` (None: greedy NMS).

    Returns:
      `Detections` with `topk_per_image` slots in resized-input pixels; `proposal_idx` is the
      index of the candidate's anchor among all levels' anchors.
    """
    all_boxes, all_scores, all_classes, all_valid, all_anchor_idx = [], [], [], [], []
    offset = 0
    for logits, deltas, level_anchors in zip(cls_logits, box_deltas, anchors, strict=True):
        num_images, num_anchors, num_classes = logits.shape
        probs = jax.nn.sigmoid(logits).reshape(num_images, num_anchors * num_classes)
        k = min(topk_candidates, num_anchors * num_classes)
        top, idx = jax.lax.top_k(jnp.where(probs > score_thresh, probs, -1.0), k)
        anchor_idx, cls = idx // num_classes, idx % num_classes
        d = jnp.take_along_axis(deltas, anchor_idx[..., None], axis=1)
        a = jnp.asarray(level_anchors)[anchor_idx]
        all_boxes.append(box2box.apply_deltas(d, a))
        all_scores.append(top)
        all_classes.append(cls)
        all_valid.append(top > score_thresh)
        all_anchor_idx.append(anchor_idx + offset)
        offset += num_anchors
    boxes = jnp.concatenate(all_boxes, axis=1)
    scores = jnp.concatenate(all_scores, axis=1)
    classes = jnp.concatenate(all_classes, axis=1)
    valid = jnp.concatenate(all_valid, axis=1) & jnp.all(jnp.isfinite(boxes), axis=-1)
    boxes = jnp.where(valid[..., None], boxes, 0.0)
    per_class = valid[:, None, :] & (classes[:, None, :] == jnp.arange(num_classes)[:, None])
    dets = nms_per_class(
        boxes[:, None],
        jnp.broadcast_to(scores[:, None], per_class.shape),
        per_class,
        nms_thresh=nms_thresh,
        topk_per_image=topk_per_image,
        backend=backend,
        nms=nms,
    )
    anchor_idx = jnp.take_along_axis(jnp.concatenate(all_anchor_idx, axis=1), dets.proposal_idx, 1)
    return dets._replace(proposal_idx=jnp.where(dets.valid, anchor_idx, 0))


def detector_postprocess(
    boxes: jax.Array, valid: jax.Array, image_sizes: jax.Array, original_sizes: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Rescales detections from the resized input to the original image.

    **Parity:** `detector_postprocess`: scale by (W0 / w, H0 / h), clip to the original size,
    drop empty boxes (here: mark them invalid).

    Args:
      boxes: `f32[B, D, 4]` xyxy in resized-input pixels.
      valid: `bool[B, D]`.
      image_sizes: `i32[B, 2]` (h, w) of the resized images.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images.

    Returns:
      `(boxes f32[B, D, 4] xyxy original pixels, valid bool[B, D])`.
    """
    sizes = image_sizes.astype(jnp.float32)
    originals = original_sizes.astype(jnp.float32)
    scale_y = (originals[:, 0] / sizes[:, 0])[:, None]
    scale_x = (originals[:, 1] / sizes[:, 1])[:, None]
    scaled = jnp.stack(
        [
            boxes[..., 0] * scale_x,
            boxes[..., 1] * scale_y,
            boxes[..., 2] * scale_x,
            boxes[..., 3] * scale_y,
        ],
        axis=-1,
    )
    scaled = box_ops.clip(scaled, originals[:, 0, None], originals[:, 1, None])
    valid = valid & box_ops.nonempty(scaled)
    return jnp.where(valid[..., None], scaled, 0.0), valid


def instances_for_image(
    outputs: dict, index: int, original_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Host side: one image's detections from a batched `rcnn.inference` output.

    Args:
      outputs: the inference dict (device or NumPy arrays): `boxes f32[B, D, 4]` original px,
        `scores f32[B, D]`, `classes i32[B, D]`, `valid bool[B, D]`, optional
        `mask_probs f32[B, D, M, M]` and `keypoints f32[B, D, K, 3]`.
      index: the image's position in the batch.
      original_size: its (H0, W0).

    Returns:
      `{"boxes": f32[D', 4], "scores": f32[D'], "classes": i32[D']}` of the valid detections in
      score order, plus `"masks": bool[D', H0, W0]` for mask models and `"keypoints":
      f32[D', K, 3]` (x, y, score in original pixels) for keypoint models. Pasting runs eagerly (not
      jitted), so a new photo size never triggers a compile. For a `ProposalNetwork` output
      (`proposal_boxes`, `objectness_logits`, `valid`): `{"proposal_boxes": f32[P', 4],
      "objectness_logits": f32[P']}`, Detectron2's field names, by descending logit.
    """
    keep = np.asarray(outputs["valid"][index])
    if "objectness_logits" in outputs:
        return {
            "proposal_boxes": np.asarray(outputs["proposal_boxes"][index], np.float32)[keep],
            "objectness_logits": np.asarray(outputs["objectness_logits"][index], np.float32)[keep],
        }
    result = {
        "boxes": np.asarray(outputs["boxes"][index], np.float32)[keep],
        "scores": np.asarray(outputs["scores"][index], np.float32)[keep],
        "classes": np.asarray(outputs["classes"][index], np.int32)[keep],
    }
    if "mask_probs" in outputs:
        probs = np.asarray(outputs["mask_probs"][index])[keep]
        if len(probs):
            result["masks"] = np.asarray(
                mask_ops.paste_masks_in_image(
                    jnp.asarray(probs), jnp.asarray(result["boxes"]), original_size
                )
            )
        else:
            result["masks"] = np.zeros((0, *original_size), bool)
    if "keypoints" in outputs:
        result["keypoints"] = np.asarray(outputs["keypoints"][index], np.float32)[keep]
    return result
