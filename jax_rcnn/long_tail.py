"""The long-tail box classifier loss: sigmoid cross-entropy and the federated loss (pure JAX).

Parity: Detectron2's `FastRCNNOutputLayers` with `ROI_BOX_HEAD.USE_SIGMOID_CE` and
`USE_FED_LOSS` (`detectron2/modeling/roi_heads/fast_rcnn.py:sigmoid_cross_entropy_loss`,
`get_fed_loss_classes`; weights from `data/detection_utils.py:get_fed_loss_cls_weights`), the
loss Detectron2 uses for LVIS (from CenterNet2's `fed_loss.py`):

* sigmoid CE: one-hot targets over the K + 1 logits, the background column dropped, binary
  cross-entropy with logits on the K foreground columns, summed and divided by the number of
  ROIs N (a background ROI has all-zero targets);
* federated loss: only the columns of a class subset count: every class among the ROIs' labels
  (the background label K included, then dropped), topped up to `FED_LOSS_NUM_CLASSES` with
  classes drawn without replacement with probability proportional to `image_count **
  FED_LOSS_FREQ_WEIGHT_POWER` (the training json's per-class image counts);
* inference: class probabilities are `sigmoid(logits)` instead of the softmax.

Static shapes: the subset is a `bool[K]` mask. The draw without replacement is the Gumbel-top-k
trick (`log w + Gumbel`, the highest m win), which has exactly `torch.multinomial(w, m,
replacement=False)`'s distribution; the number drawn, `m = FED_LOSS_NUM_CLASSES - (labels
present)`, is data dependent, so every candidate is ranked and the first m kept.

Deviation: Detectron2 samples the subset once per GPU over that GPU's images (2 with the
standard 16-image batch on 8 GPUs); here it is sampled once per call over the ROIs given, i.e.
once per global batch in the train step (with `jax.random`, so the draws are not torch's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def fed_loss_class_weights(image_counts: np.ndarray, power: float) -> np.ndarray:
    """f32[K] sampling weights `image_count ** power` (`get_fed_loss_cls_weights`).

    Args:
        image_counts: i64[K] training images per class, in class order.
        power: `ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER` (0.5 in Detectron2's LVIS configs).
    """
    counts = np.asarray(image_counts, np.float32)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("image_counts must be a 1-d array of counts >= 0")
    return counts**power


def fed_loss_classes(
    key: jax.Array,
    gt_classes: jax.Array,
    roi_valid: jax.Array,
    weights: jax.Array,
    num_fed_loss_classes: int,
) -> jax.Array:
    """The federated class subset (`get_fed_loss_classes`), as a mask.

    Example: labels {3, K (background)} with `num_fed_loss_classes = 5`: class 3 plus 3 classes
    drawn from the others by weight (background counts towards the 5, as in Detectron2).

    Args:
        key: PRNG key of the draw.
        gt_classes: i32[N] ROI labels in [0, K] (K = background).
        roi_valid: bool[N] real (sampled) ROIs; the others do not count.
        weights: f32[K] sampling weights (`fed_loss_class_weights`); a class of weight 0 is
            never drawn.
        num_fed_loss_classes: the subset size to reach (static).

    Returns:
        bool[K] the classes whose columns enter the loss.
    """
    k = weights.shape[0]
    hits = jnp.zeros(k + 1, jnp.int32).at[gt_classes].add(roi_valid.astype(jnp.int32))
    present = hits > 0  # bool[K+1], background included
    num_draw = jnp.maximum(num_fed_loss_classes - jnp.sum(present), 0)
    gumbel = jax.random.gumbel(key, (k,), jnp.float32)
    logw = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)
    score = jnp.where(present[:k], -jnp.inf, logw + gumbel)
    order = jnp.argsort(-score)  # candidates by score, highest first
    rank = jnp.zeros(k, jnp.int32).at[order].set(jnp.arange(k, dtype=jnp.int32))
    drawn = (rank < num_draw) & jnp.isfinite(score)
    return present[:k] | drawn


def sigmoid_ce_per_roi(
    logits: jax.Array, gt_classes: jax.Array, class_mask: jax.Array | None = None
) -> jax.Array:
    """Per-ROI sigmoid cross-entropy: the BCE of the K foreground columns, summed.

    A `ClsLoss` (`jax_rcnn.research`): averaged over the ROIs it is Detectron2's
    `sigmoid_cross_entropy_loss` (sum over ROIs and classes / N).

    Args:
        logits: f32[..., K + 1] class logits (background last).
        gt_classes: i32[...] labels in [0, K].
        class_mask: optional bool[K] federated subset; None = all classes.

    Returns:
        f32[...].
    """
    k = logits.shape[-1] - 1
    target = jax.nn.one_hot(gt_classes, k + 1, dtype=logits.dtype)[..., :k]
    x = logits[..., :k]
    bce = jnp.maximum(x, 0) - x * target + jnp.log1p(jnp.exp(-jnp.abs(x)))
    if class_mask is not None:
        bce = bce * class_mask.astype(logits.dtype)
    return jnp.sum(bce, axis=-1)


def sigmoid_ce_loss(
    logits: jax.Array,
    gt_classes: jax.Array,
    roi_valid: jax.Array,
    class_mask: jax.Array | None = None,
) -> jax.Array:
    """Detectron2's `sigmoid_cross_entropy_loss` over the valid ROIs.

    Args:
        logits: f32[N, K + 1] class logits (background last).
        gt_classes: i32[N] labels in [0, K].
        roi_valid: bool[N]; invalid rows count neither in the sum nor in N.
        class_mask: optional bool[K] federated subset (`fed_loss_classes`); None = all classes.

    Returns:
        f32[] `sum(BCE * mask) / max(N_valid, 1)` (0 without valid ROIs, as Detectron2's empty
        case).
    """
    per_roi = sigmoid_ce_per_roi(logits, gt_classes, class_mask)
    n = jnp.maximum(jnp.sum(roi_valid), 1).astype(logits.dtype)
    return jnp.sum(jnp.where(roi_valid, per_roi, 0.0)) / n


def sigmoid_class_probs(logits: jax.Array) -> jax.Array:
    """f32[..., K + 1] `sigmoid(logits)`: the class scores of a sigmoid-CE box predictor
    (`FastRCNNOutputLayers.predict_probs`; the background column is ignored downstream)."""
    return jax.nn.sigmoid(logits)
