"""Test-time NMS variants in the `jax_rcnn.research.TestNMS` signature: greedy NMS and Soft-NMS.

**Parity:** "nms" is Detectron2's per-class `batched_nms` (through `jax_rcnn.kernels.nms`,
Pallas on GPU). Detectron2 has no Soft-NMS (its issue #980); "soft_nms_linear" and
"soft_nms_gaussian" follow Bodla et al. 2017 as Detectron (v1) implemented it
(`utils/cython_nms.pyx:soft_nms`): repeatedly keep the highest current score, then decay every
remaining score by `1 - IoU` where IoU > the NMS threshold (linear) or by `exp(-IoU^2 / sigma)`
(Gaussian, sigma 0.5), dropping boxes whose score falls below `SOFT_NMS_MIN_SCORE` (0.001).
Kept boxes report their decayed score. Static shapes: `max_output` picks, each an argmax and
one row of IoUs over the N candidates (O(max_output x N) per group, no N x N matrix), through
`jax_rcnn.kernels.soft_nms`: the pure-JAX reference (a `fori_loop` per group) on CPU, a Pallas
kernel with one program per group on GPU (`pallas_kernels/soft_nms.py`, self-checked against
the reference on the device like the other kernels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_rcnn import kernels

SOFT_NMS_SIGMA = 0.5
SOFT_NMS_MIN_SCORE = 1e-3


def greedy_nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    backend: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Test NMS "nms" (the default): torchvision / Detectron2 greedy NMS per group.

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]` candidates taking part.
      iou_threshold: suppress a box whose IoU with a kept one is > this.
      max_output: K kept slots per group (static).
      backend: `jax_rcnn.kernels` backend.

    Returns:
      `(keep i32[G, K], keep_scores f32[G, K], keep_valid bool[G, K])`, descending score.
    """
    keep, keep_valid = kernels.nms(
        boxes, scores, valid, iou_threshold=iou_threshold, max_output=max_output, backend=backend
    )
    return keep, jnp.take_along_axis(scores, keep, axis=1), keep_valid


def soft_nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    method: str,
    sigma: float = SOFT_NMS_SIGMA,
    min_score: float = SOFT_NMS_MIN_SCORE,
    backend: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Soft-NMS per group (see the module docstring), `jax_rcnn.kernels.soft_nms`.

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]`.
      iou_threshold: the linear method's overlap threshold Nt (Gaussian: unused).
      max_output: K slots per group (static).
      method: "linear" or "gaussian".
      sigma: the Gaussian's sigma.
      min_score: boxes whose (decayed) score is below this are dropped.
      backend: `jax_rcnn.kernels` backend (the Pallas kernel on GPU with "auto").

    Returns:
      `(keep i32[G, K], keep_scores f32[G, K], keep_valid bool[G, K])` in pick order (each
      pick is the highest current score); padding slots hold 0.

    Example:
      Two boxes with IoU 0.8, scores 0.9 and 0.6, linear, Nt 0.5: keep 0 (0.9), then 1 with
      0.6 x (1 - 0.8) = 0.12. Greedy NMS would drop box 1.
    """
    return kernels.soft_nms(
        boxes,
        scores,
        valid,
        iou_threshold=iou_threshold,
        max_output=max_output,
        method=method,
        sigma=sigma,
        min_score=min_score,
        backend=backend,
    )


def soft_nms_linear(boxes, scores, valid, *, iou_threshold, max_output, backend="auto"):
    """Test NMS "soft_nms_linear": `soft_nms(method="linear")`."""
    return soft_nms(
        boxes,
        scores,
        valid,
        iou_threshold=iou_threshold,
        max_output=max_output,
        method="linear",
        backend=backend,
    )


def soft_nms_gaussian(boxes, scores, valid, *, iou_threshold, max_output, backend="auto"):
    """Test NMS "soft_nms_gaussian": `soft_nms(method="gaussian")`, sigma `SOFT_NMS_SIGMA`."""
    return soft_nms(
        boxes,
        scores,
        valid,
        iou_threshold=iou_threshold,
        max_output=max_output,
        method="gaussian",
        backend=backend,
    )
