"""Sigmoid CE and the federated loss against direct NumPy re-computations of Detectron2's code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import long_tail as LT


def _np_sigmoid_ce(logits, gt, valid, mask=None):
    # fast_rcnn.py: sigmoid_cross_entropy_loss on the valid rows.
    logits, gt = logits[valid], gt[valid]
    n, k = logits.shape[0], logits.shape[1] - 1
    if n == 0:
        return 0.0
    target = np.zeros((n, k + 1))
    target[np.arange(n), gt] = 1
    target = target[:, :k]
    x = logits[:, :k].astype(np.float64)
    bce = np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))
    w = 1.0 if mask is None else np.broadcast_to(mask[None, :k], (n, k))
    return float(np.sum(bce * w) / n)


def test_sigmoid_ce_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (9, 6)).astype(np.float32)
    gt = rng.integers(0, 6, 9).astype(np.int32)  # 5 = background
    valid = rng.random(9) < 0.7
    mask = rng.random(5) < 0.5
    for m in (None, mask):
        got = LT.sigmoid_ce_loss(
            jnp.asarray(logits),
            jnp.asarray(gt),
            jnp.asarray(valid),
            None if m is None else jnp.asarray(m),
        )
        np.testing.assert_allclose(float(got), _np_sigmoid_ce(logits, gt, valid, m), rtol=1e-5)
    assert (
        float(LT.sigmoid_ce_loss(jnp.asarray(logits), jnp.asarray(gt), jnp.zeros(9, bool))) == 0.0
    )


def test_fed_loss_classes_keeps_present_and_tops_up():
    k = 12
    weights = jnp.asarray(LT.fed_loss_class_weights(np.arange(k) + 1, 0.5))
    gt = jnp.asarray([3, 3, 7, k, k, 1], jnp.int32)
    valid = jnp.asarray([True, True, True, True, True, False])  # class 1 only in a padded row
    for seed in range(20):
        mask = np.asarray(LT.fed_loss_classes(jax.random.key(seed), gt, valid, weights, 6))
        assert mask[3] and mask[7]
        # present = {3, 7, background}: 6 - 3 = 3 drawn, background column dropped.
        assert mask.sum() == 5
    # Enough labels present: nothing drawn.
    many = jnp.arange(k + 1, dtype=jnp.int32)
    mask = LT.fed_loss_classes(jax.random.key(0), many, jnp.ones(k + 1, bool), weights, 4)
    assert np.asarray(mask).all()
    # Zero weight: never drawn.
    w0 = weights.at[jnp.arange(6)].set(0.0)
    for seed in range(10):
        m = np.asarray(LT.fed_loss_classes(jax.random.key(seed), gt[:1], valid[:1], w0, 5))
        assert not m[[0, 1, 2, 4, 5]].any() and m[3] and m.sum() == 5


def test_fed_loss_draw_follows_the_weights():
    # Without replacement, one draw: P(class) = w / sum(w) (torch.multinomial's first draw).
    weights = jnp.asarray([1.0, 2.0, 4.0, 8.0, 0.0])
    gt = jnp.asarray([5], jnp.int32)  # background only: 2 - 1 = 1 class drawn
    draw = jax.vmap(lambda key: LT.fed_loss_classes(key, gt, jnp.ones(1, bool), weights, 2))(
        jax.random.split(jax.random.key(1), 20000)
    )
    freq = np.asarray(draw).mean(axis=0)
    np.testing.assert_allclose(freq, np.asarray(weights) / 15.0, atol=0.012)
    assert np.asarray(draw).sum(axis=1).tolist() == [1] * 20000


def test_weights_and_errors():
    np.testing.assert_allclose(LT.fed_loss_class_weights([4, 9, 0], 0.5), [2, 3, 0])
    with pytest.raises(ValueError, match="image_counts"):
        LT.fed_loss_class_weights([[1]], 0.5)
