"""The one dispatch point between jax_rcnn and `pallas_kernels`.

Model code calls `roi_align` and `nms` here with `backend=config.model.kernels`; this module
picks the Pallas kernel or the pure-JAX reference. Nothing else in jax_rcnn imports
`pallas_kernels`.

`backend`:
  * "reference": the pure-JAX references (any platform; the CPU implementation);
  * "pallas": the Pallas kernels, compiled on GPU and run in interpret mode elsewhere;
  * "auto": Pallas when the default JAX backend is a GPU and the kernels are available,
    the references otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from pallas_kernels import nms as _nms
from pallas_kernels import roi_align as _roi_align

BACKENDS = ("auto", "pallas", "reference")


def resolve_backend(backend: str) -> str:
    """Returns "pallas" or "reference" for a `config.model.kernels` value.

    Raises:
      ValueError: `backend` is not one of `BACKENDS`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"config.model.kernels must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        has_pallas = hasattr(_roi_align, "roi_align") and hasattr(_nms, "nms")
        return "pallas" if (jax.default_backend() == "gpu" and has_pallas) else "reference"
    if backend == "pallas" and not (hasattr(_roi_align, "roi_align") and hasattr(_nms, "nms")):
        raise NotImplementedError(
            "config.model.kernels='pallas' but this build of pallas_kernels has no Pallas "
            "kernels yet; use 'reference' or 'auto'"
        )
    return backend


def roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    batch_idx: jax.Array,
    level_idx: jax.Array,
    *,
    spatial_scales: Sequence[float],
    output_size: int,
    sampling_ratio: int,
    aligned: bool = True,
    backend: str = "auto",
) -> jax.Array:
    """Multi-level ROIAlign (Detectron2 `ROIAlign`, torchvision `roi_align` semantics).

    Args:
      features: per level `f32|bf16[B, H_l, W_l, C]` NHWC feature maps.
      boxes: `f32[R, 4]` xyxy in input-image pixels.
      batch_idx: `i32[R]` image of each box.
      level_idx: `i32[R]` index into `features` of each box.
      spatial_scales: per level `1 / stride`.
      output_size: S, output is S x S bins.
      sampling_ratio: samples per bin side; 0 = adaptive `ceil(roi_size / S)`.
      aligned: ROIAlignV2 half-pixel shift.
      backend: see module docstring.

    Returns:
      `f32[R, S, S, C]` pooled features (feature dtype for bf16 inputs is upcast to f32).
    """
    impl = (
        _roi_align.roi_align
        if resolve_backend(backend) == "pallas"
        else _roi_align.roi_align_reference
    )
    return impl(
        features,
        boxes,
        batch_idx,
        level_idx,
        spatial_scales=tuple(spatial_scales),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    backend: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """Batched greedy NMS over independent groups (torchvision `nms` semantics).

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]` candidates taking part; others are never kept nor suppress.
      iou_threshold: a box is suppressed when its IoU with a kept box is > this (strict).
      max_output: K, number of kept slots returned per group.
      backend: see module docstring.

    Returns:
      `(keep i32[G, K], keep_valid bool[G, K])`: indices into N of kept boxes in descending
      score order; slots past the number kept hold index 0 and `keep_valid=False`.
    """
    impl = _nms.nms if resolve_backend(backend) == "pallas" else _nms.nms_reference
    return impl(boxes, scores, valid, iou_threshold=iou_threshold, max_output=max_output)
