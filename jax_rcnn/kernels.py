"""The one dispatch point between jax_rcnn and `pallas_kernels`.

Model code calls `roi_align`, `nms` and `soft_nms` here with `backend=config.model.kernels`;
this module picks the Pallas kernel or the pure-JAX reference. Nothing else in jax_rcnn imports
`pallas_kernels`.

`backend`:
  * "reference": the pure-JAX references (any platform; the CPU implementation);
  * "pallas": the Pallas kernels, compiled on GPU and run in interpret mode elsewhere. On a
    GPU each kernel must pass its self-check (`jax_rcnn.kernel_check`) first, or
    `KernelCheckError` is raised;
  * "auto": on a GPU, each Pallas kernel that passes its self-check on that device, the
    reference for one that fails (with a logged warning naming the kernel, the device and the
    error); the references on every other platform.

The self-check runs once per (kernel version, device kind, JAX version) and machine, eagerly,
the first time a kernel is resolved (usually while the model is being traced); see
`jax_rcnn.kernel_check` for the cache and `$JAX_RCNN_KERNEL_CHECK` ("on", "off", "rerun").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax

from jax_rcnn import kernel_check
from jax_rcnn.kernel_check import Kernel, KernelCheckError, Verdict
from pallas_kernels import nms as _nms
from pallas_kernels import roi_align as _roi_align
from pallas_kernels import soft_nms as _soft_nms

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pallas", "reference")

KERNELS = {
    "roi_align": Kernel(
        _roi_align.roi_align, _roi_align.roi_align_reference, _roi_align.KERNEL_VERSION
    ),
    "nms": Kernel(_nms.nms, _nms.nms_reference, _nms.KERNEL_VERSION),
    "soft_nms": Kernel(_soft_nms.soft_nms, _soft_nms.soft_nms_reference, _soft_nms.KERNEL_VERSION),
}
"""op -> its implementations; tests swap in faulty kernels here."""

_WARNED: set[str] = set()


def _platform() -> str:
    return jax.default_backend()


def _device_kind() -> str:
    return jax.devices()[0].device_kind


def self_check(op: str, *, check_mode: str | None = None) -> Verdict:
    """The (cached) self-check verdict of `op`'s Pallas kernel on the default device.

    Args:
      op: a key of `KERNELS` ("roi_align", "nms", "soft_nms").
      check_mode: "on", "off" or "rerun"; None reads `$JAX_RCNN_KERNEL_CHECK`.
    """
    return kernel_check.verdict(
        op,
        KERNELS[op],
        device_kind=_device_kind(),
        interpret=jax.default_backend() != "gpu",  # the real platform, also when tests fake it
        check_mode=check_mode,
    )


def resolve_backend(backend: str, op: str | None = None) -> str:
    """Returns "pallas" or "reference" for a `config.model.kernels` value.

    Called with static arguments, often at trace time; the first call that needs a GPU
    self-check runs it eagerly (seconds, once per machine).

    Args:
      backend: one of `BACKENDS`.
      op: a key of `KERNELS`; None resolves for all (Pallas only if all pass).

    Raises:
      ValueError: `backend` is not one of `BACKENDS`.
      KernelCheckError: `backend="pallas"` and a kernel failed its self-check on this GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"config.model.kernels must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference" or (backend == "auto" and _platform() != "gpu"):
        return "reference"
    if _platform() != "gpu":
        return "pallas"  # forced off GPU: the interpreter, nothing compiled to check
    for name in (op,) if op is not None else tuple(KERNELS):
        result = self_check(name)
        if result.ok:
            continue
        where = f"{_device_kind()} (jax {jax.__version__})"
        if backend == "pallas":
            raise KernelCheckError(
                f"the Pallas {name} kernel failed its self-check on {where}: {result.detail}. "
                "config.model.kernels='pallas' forces the kernels; use 'auto' (falls back to "
                "the pure-JAX reference) or 'reference'."
            )
        if name not in _WARNED:
            _WARNED.add(name)
            logger.warning(
                "the Pallas %s kernel failed its self-check on %s: %s. Using the pure-JAX "
                "reference for %s in this run (config.model.kernels='auto'). Please report "
                "this with the device; $%s=rerun checks again.",
                name,
                where,
                result.detail,
                name,
                kernel_check.MODE_ENV,
            )
        return "reference"
    return "pallas"


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
    kernel = KERNELS["roi_align"]
    impl = kernel.pallas if resolve_backend(backend, "roi_align") == "pallas" else kernel.reference
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
    kernel = KERNELS["nms"]
    impl = kernel.pallas if resolve_backend(backend, "nms") == "pallas" else kernel.reference
    return impl(boxes, scores, valid, iou_threshold=iou_threshold, max_output=max_output)


def soft_nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    *,
    iou_threshold: float,
    max_output: int,
    method: str,
    sigma: float,
    min_score: float,
    backend: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Soft-NMS over independent groups (`pallas_kernels.soft_nms`: Bodla et al., Detectron v1).

    Args:
      boxes: `f32[G, N, 4]` xyxy.
      scores: `f32[G, N]`.
      valid: `bool[G, N]` candidates taking part.
      iou_threshold: the linear method's overlap threshold (Gaussian: unused).
      max_output: K picks per group (static).
      method: "linear" or "gaussian".
      sigma: the Gaussian's sigma.
      min_score: boxes whose decayed score falls below this are dropped.
      backend: see module docstring.

    Returns:
      `(keep i32[G, K], keep_scores f32[G, K], keep_valid bool[G, K])` in pick order; padding
      slots hold 0.
    """
    kernel = KERNELS["soft_nms"]
    impl = kernel.pallas if resolve_backend(backend, "soft_nms") == "pallas" else kernel.reference
    return impl(
        boxes,
        scores,
        valid,
        iou_threshold=iou_threshold,
        max_output=max_output,
        method=method,
        sigma=sigma,
        min_score=min_score,
    )
