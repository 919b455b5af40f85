"""What every meta-architecture shares: bound networks, input normalisation, first-slot runs.

**Parity:** `preprocess` is Detectron2's `GeneralizedRCNN.preprocess_image` /
`DenseDetector.preprocess_image`: normalisation inside the model, zero padding *after*
normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jax_rcnn import postprocess

# Static slot counts that work on "the first n of S padded slots" may run on (plus S itself).
FIRST_SLOT_SIZES = (8, 16, 32, 64)

# Variable collections that are not Flax variables: model-side training state carried by the
# train state (`TrainState.loss_state`), e.g. RetinaNet's loss normaliser.
LOSS_STATE = "loss_state"


class Networks:
    """A model's networks with their variables bound: `nets.features(x)`, `nets.box_head(p)`.

    Every attribute is a method of the Flax container (`GeneralizedRCNN`, `RetinaNet`, ...)
    applied with the bound variables. With `mutable` collections (BN `batch_stats` in
    training), each call applies the method with those collections mutable and keeps the
    updates, so the next network sees them (as PyTorch's in-place BN buffers do).
    """

    def __init__(self, model: Any, variables: dict[str, Any], mutable: Sequence[str] = ()):
        self.model = model
        self.state = {k: v for k, v in variables.items() if k != LOSS_STATE}
        self.mutable = tuple(mutable)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(type(self.model), name)

        def call(*args):
            if not self.mutable:
                return self.model.apply(self.state, *args, method=method)
            out, updates = self.model.apply(
                self.state, *args, method=method, mutable=list(self.mutable)
            )
            self.state.update(updates)
            return out

        return call

    def mutable_state(self) -> dict[str, Any]:
        """The current values of the mutable collections (`{}` without any)."""
        return {k: self.state[k] for k in self.mutable}

    def set_mutable_state(self, values: dict[str, Any]) -> None:
        """Replaces the mutable collections (e.g. with a `lax.switch` branch's outputs)."""
        self.state.update(values)


def feature_stride(name: str, res5_dilation: int = 1) -> int:
    """Stride of a feature name: pyramid levels "p2" -> 4, ..., "p7" -> 128; ResNet stages
    "res2" -> 4, ..., "res5" -> 32, or 16 with `res5_dilation=2` (DC5)."""
    if name.startswith("res"):
        stage = int(name[3:])
        return 2 ** (stage - 1) if stage == 5 and res5_dilation == 2 else 2**stage
    return 2 ** int(name[1:])


def preprocess(
    images: jax.Array,
    image_sizes: jax.Array,
    pixel_mean: tuple[float, ...],
    pixel_std: tuple[float, ...],
) -> jax.Array:
    """Normalises a padded batch exactly like Detectron2's `preprocess_image`.

    Args:
      images: `u8|f32[B, H, W, 3]` BGR, each image at the top-left, anything in the padding.
      image_sizes: `i32[B, 2]` (h, w) of each image before padding.
      pixel_mean: per-channel mean (BGR).
      pixel_std: per-channel std.

    Returns:
      `f32[B, H, W, 3]`: `(x - mean) / std` inside each image, exactly 0 in the padding
      (Detectron2 pads the *normalised* tensor with zeros).
    """
    x = (images.astype(jnp.float32) - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(
        pixel_std, jnp.float32
    )
    rows = jnp.arange(images.shape[1])[None, :, None]
    cols = jnp.arange(images.shape[2])[None, None, :]
    inside = (rows < image_sizes[:, 0, None, None]) & (cols < image_sizes[:, 1, None, None])
    return jnp.where(inside[..., None], x, 0.0)


def backbone_features(config, nets: Networks, images, image_sizes) -> dict[str, jax.Array]:
    """Stage 1 of every detector: normalise the padded batch, run the backbone.

    Args:
      config: the jax_rcnn config (`model.pixel_mean`, `model.pixel_std`).
      nets: the bound networks (a `features` method).
      images: `u8|f32[B, H, W, 3]` BGR, padded bottom/right.
      image_sizes: `i32[B, 2]` (h, w) before padding.

    Returns:
      The feature dict, e.g. `{"p2": f32[B, H/4, W/4, C], ..., "p6": ...}`.
    """
    m = config.model
    return nets.features(preprocess(images, image_sizes, m.pixel_mean, m.pixel_std))


def edge_pad_features(
    features: dict[str, jax.Array], shapes: dict[str, tuple[int, ...]]
) -> dict[str, jax.Array]:
    """Pads each feature map bottom/right to `shapes[name]` by repeating its last row/column.

    Lets one ROI-head program serve every padded image shape (`rcnn.inference_heads`): boxes
    are clipped to the image, so ROIAlign samples at most half a pixel (aligned) or one pixel
    (legacy) past the last row/column of the unpadded map, where Detectron2's ROIAlign clamps
    to that row/column; with the row/column repeated, the bilinear weights of the clamped and
    the repeated cell add up to the same value (equal up to float32 rounding, ~1 ulp).

    Args:
      features: `{name: f32[B, H_l, W_l, C]}`.
      shapes: `{name: (B, H'_l, W'_l, C)}` with `H'_l >= H_l`, `W'_l >= W_l` (names of
        `features` only).

    Returns:
      `{name: f32[B, H'_l, W'_l, C]}`.
    """
    out = {}
    for name, f in features.items():
        target = tuple(shapes[name])
        if len(target) != f.ndim or any(t < s for s, t in zip(f.shape, target, strict=False)):
            raise ValueError(f"feature {name!r} of shape {f.shape} does not fit in {target}")
        widths = [(0, t - s) for s, t in zip(f.shape, target, strict=True)]
        out[name] = jnp.pad(f, widths, mode="edge")
    return out


def run_on_first_slots(valid: jax.Array, make_branch, *operands, sizes=FIRST_SLOT_SIZES):
    """`make_branch(n)(*operands)` for the smallest n of `sizes` (or S) that holds every valid
    slot of every image: one `lax.switch` branch per size.

    Padded arrays of S slots (detections, foreground ROIs, gt) mostly hold padding; work that
    ignores invalid slots gives the same result on the first n slots when no valid slot lies
    beyond n. Each branch must return the same shapes (pad back to S where needed).

    Args:
      valid: `bool[B, S]` valid slots.
      make_branch: `n -> fn(*operands)`, n a static int.
      *operands: passed to the chosen branch.
      sizes: the candidate n (S is always one).
    """
    num_slots = valid.shape[1]
    sizes = sorted({min(n, num_slots) for n in (*sizes, num_slots)})
    needed = jnp.max(jnp.where(valid, jnp.arange(1, num_slots + 1), 0))
    index = jnp.searchsorted(jnp.asarray(sizes), needed)
    return jax.lax.switch(index, [make_branch(n) for n in sizes], *operands)


def label_on_first_gt(label_one, gt_boxes, gt_valid, *operands):
    """`vmap(label_one)` over images, against the first n gt slots holding every valid gt.

    Anchor-gt IoU is `[G, A]` per image (G = `input.max_gt`, 100 for COCO: 0.4 s of a
    full-size CPU step); padded gt never match, so labelling against the first n gt slots that
    hold every valid one gives the same labels.

    Args:
      label_one: `(gt_boxes f32[n, 4], gt_valid bool[n], *operand_i) -> targets` of one image.
      gt_boxes: `f32[B, G, 4]`.
      gt_valid: `bool[B, G]`.
      *operands: per-image operands with a leading B (keys, image sizes, ...).
    """
    gt_valid = gt_valid.astype(bool)

    def first(n):
        def branch(gt_boxes, gt_valid, *operands):
            return jax.vmap(label_one)(gt_boxes[:, :n], gt_valid[:, :n], *operands)

        return branch

    return run_on_first_slots(gt_valid, first, gt_boxes, gt_valid, *operands)


def detection_outputs(
    dets: postprocess.Detections, image_sizes: jax.Array, original_sizes: jax.Array
) -> dict[str, jax.Array]:
    """The last stage of every detector: `detector_postprocess` of the detections.

    Args:
      dets: detections in the resized-input frame, D slots.
      image_sizes: `i32[B, 2]` (h, w) of the resized images.
      original_sizes: `i32[B, 2]` (H0, W0) of the original images.

    Returns:
      `boxes f32[B, D, 4]` xyxy original pixels (scaled, clipped, empty ones invalid),
      `scores f32[B, D]`, `classes i32[B, D]`, `valid bool[B, D]`, and the resized-frame
      `det_boxes f32[B, D, 4]`, `det_valid bool[B, D]`.
    """
    boxes, valid = postprocess.detector_postprocess(
        dets.boxes, dets.valid, image_sizes, original_sizes
    )
    return dict(
        boxes=boxes,
        scores=dets.scores,
        classes=dets.classes,
        valid=valid,
        det_boxes=dets.boxes,
        det_valid=dets.valid,
    )
