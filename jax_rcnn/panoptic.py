"""Panoptic post-processing on the host: Detectron2's combine step and per-image results.

**Parity:** `combine_semantic_and_instances` is Detectron2's
`modeling/meta_arch/panoptic_fpn.py:combine_semantic_and_instance_outputs`: instances in
descending score order (stable), stop at the first score < `instances_score_thresh`, skip empty
masks and masks whose overlap with already assigned pixels is > `overlap_thresh` of their area,
assign the rest of each mask a new id (1, 2, ...); then each semantic label in ascending order
(0 = "things" skipped) whose still unassigned pixels number >= `stuff_area_thresh` becomes a
segment. Pixels left over are 0 (void).

Why host-side NumPy: the loop is sequential over a data-dependent number of instances and the
output is a variable-length segment list at the original image size, which differs per image;
it runs after `detector_postprocess` and the mask pasting, as in Detectron2 (outside the
model). The jit-compiled part of Panoptic FPN ends at the stride-4 semantic logits and the
padded detections (`jax_rcnn.meta_arch.panoptic_fpn.inference`).
"""

from __future__ import annotations

import numpy as np

from jax_rcnn import postprocess, semantic


def combine_semantic_and_instances(
    instance_masks: np.ndarray,
    instance_scores: np.ndarray,
    instance_classes: np.ndarray,
    semantic_labels: np.ndarray,
    *,
    overlap_thresh: float,
    stuff_area_thresh: int,
    instances_score_thresh: float,
) -> tuple[np.ndarray, list[dict]]:
    """Detectron2's `combine_semantic_and_instance_outputs` for one image.

    Args:
      instance_masks: `bool[D, H0, W0]` pasted masks of the final detections.
      instance_scores: `f32[D]`.
      instance_classes: `i32[D]` contiguous thing classes.
      semantic_labels: `int[H0, W0]` semantic argmax (0 = things, 1.. = stuff).
      overlap_thresh: `PANOPTIC_FPN.COMBINE.OVERLAP_THRESH`.
      stuff_area_thresh: `PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT` (pixels).
      instances_score_thresh: `PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH`.

    Returns:
      `(panoptic_seg i32[H0, W0], segments_info)`: 0 = void, segment ids 1..; segments_info as
      Detectron2's: things `{"id", "isthing": True, "score", "category_id", "instance_id"}`
      (`instance_id` = row of the inputs), stuff `{"id", "isthing": False, "category_id",
      "area"}`.
    """
    panoptic = np.zeros(semantic_labels.shape, np.int32)
    segments: list[dict] = []
    scores = np.asarray(instance_scores, np.float32)
    order = np.argsort(-scores, kind="stable")
    masks = np.asarray(instance_masks, bool)
    for i in order:
        score = float(scores[i])
        if score < instances_score_thresh:
            break
        mask = masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        taken = panoptic > 0
        intersect = int((mask & taken).sum())
        if intersect / area > overlap_thresh:
            continue
        if intersect > 0:
            mask = mask & ~taken
        panoptic[mask] = len(segments) + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "isthing": True,
                "score": score,
                "category_id": int(instance_classes[i]),
                "instance_id": int(i),
            }
        )
    for label in np.unique(semantic_labels):
        if label == 0:  # "things"
            continue
        mask = (semantic_labels == label) & (panoptic == 0)
        area = int(mask.sum())
        if area < stuff_area_thresh:
            continue
        panoptic[mask] = len(segments) + 1
        segments.append(
            {"id": len(segments) + 1, "isthing": False, "category_id": int(label), "area": area}
        )
    return panoptic, segments


def panoptic_for_image(
    outputs: dict,
    index: int,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    config,
) -> dict:
    """Host side: one image's Panoptic FPN / SemanticSegmentor results from a batched output.

    Args:
      outputs: the inference dict (`sem_seg_logits f32[B, H/s, W/s, K]`; PanopticFPN also the
        detections of `rcnn.inference`).
      index: the image's position in the batch.
      image_size: its resized (h, w) inside the padding.
      original_size: its (H0, W0).
      config: the jax_rcnn config (`model.sem_seg_head`, `model.panoptic_fpn.combine`).

    Returns:
      `{"sem_seg": f32[K, H0, W0]` logits (Detectron2's layout), `"sem_seg_labels": i32[H0,
      W0]` argmax`}`; PanopticFPN adds the instances of `postprocess.instances_for_image`
      (`boxes`, `scores`, `classes`, `masks`) and `"panoptic_seg": i32[H0, W0]`,
      `"segments_info": list[dict]` (`combine_semantic_and_instances`).
    """
    m = config.model
    logits = np.asarray(outputs["sem_seg_logits"][index], np.float32)
    sem = semantic.sem_seg_postprocess(
        logits, image_size, original_size, m.sem_seg_head.common_stride
    )
    labels = np.argmax(sem, axis=0).astype(np.int32)
    result = {"sem_seg": sem, "sem_seg_labels": labels}
    if m.meta_architecture != "PanopticFPN":
        return result
    result.update(postprocess.instances_for_image(outputs, index, tuple(original_size)))
    c = m.panoptic_fpn.combine
    result["panoptic_seg"], result["segments_info"] = combine_semantic_and_instances(
        result["masks"],
        result["scores"],
        result["classes"],
        labels,
        overlap_thresh=c.overlap_thresh,
        stuff_area_thresh=c.stuff_area_limit,
        instances_score_thresh=c.instances_confidence_thresh,
    )
    return result
