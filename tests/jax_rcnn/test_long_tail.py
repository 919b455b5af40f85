"""Sigmoid CE and the federated loss against direct NumPy re-computations of Detectron2's code."""

from __future__ import annotations

import pathlib

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


# --- wired into the box head ------------------------------------------------------------------


def _fed_config(counts=(5, 1, 0, 9)):
    from jax_rcnn.config import load_config

    config = load_config("configs/quickstart_lvis.py:fed_loss_smoke")
    config.model.roi_heads.num_classes = len(counts)
    config.model.roi_box_head.fed_loss_image_counts = tuple(counts)
    config.model.roi_box_head.fed_loss_num_classes = 3
    return config


def test_box_head_loss_is_detectron2s_sigmoid_fed_loss():
    from jax_rcnn.meta_arch import roi_heads

    config = _fed_config()
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 5, 5)).astype(np.float32)  # B=2, R=5, K+1=5
    gt = np.array([[0, 4, 4, 3, 1], [4, 4, 0, 4, 4]], np.int32)
    valid = np.array([[True] * 5, [True, True, True, False, False]])
    key = jax.random.key(7)
    fn = roi_heads.cls_loss_fn(config, jnp.asarray(gt), jnp.asarray(valid), key)
    per_roi = fn(jnp.asarray(logits), jnp.asarray(gt))
    got = float(jnp.sum(jnp.where(valid, per_roi, 0.0)) / valid.sum())
    weights = jnp.asarray(LT.fed_loss_class_weights(np.array([5, 1, 0, 9]), 0.5))
    mask = np.asarray(
        LT.fed_loss_classes(key, jnp.asarray(gt.ravel()), jnp.asarray(valid.ravel()), weights, 3)
    )
    assert mask[0] and mask[1] and mask[3] and not mask[2]  # present: 0, 1, 3; class 2 weighs 0
    want = _np_sigmoid_ce(logits.reshape(-1, 5), gt.ravel(), valid.ravel(), mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Without the federated subset: plain sigmoid CE over all classes.
    config.model.roi_box_head.use_fed_loss = False
    plain = roi_heads.cls_loss_fn(config, jnp.asarray(gt), jnp.asarray(valid), key)
    got = float(jnp.sum(jnp.where(valid, plain(jnp.asarray(logits), jnp.asarray(gt)), 0)) / 8)
    np.testing.assert_allclose(
        got, _np_sigmoid_ce(logits.reshape(-1, 5), gt.ravel(), valid.ravel()), rtol=1e-5
    )


def test_sigmoid_scores_at_inference_and_missing_counts():
    from jax_rcnn.meta_arch import roi_heads

    config = _fed_config()
    logits = jnp.asarray([[0.3, -1.0, 2.0, 0.0, 5.0]])
    np.testing.assert_allclose(
        roi_heads.class_probs(config, logits), jax.nn.sigmoid(logits), rtol=1e-6
    )
    config.model.roi_box_head.use_sigmoid_ce = False
    np.testing.assert_allclose(
        roi_heads.class_probs(config, logits), jax.nn.softmax(logits), rtol=1e-6
    )
    config = _fed_config(counts=())
    config.model.roi_heads.num_classes = 4
    with pytest.raises(ValueError, match="fed_loss_image_counts has 0 entries.*4 classes"):
        roi_heads.fed_loss_weights(config)


def test_fed_loss_counts_from_lvis_meta_or_counted():
    from jax_rcnn.training.loop import with_fed_loss_counts

    config = _fed_config(counts=())
    config.model.roi_heads.num_classes = 3
    records = [
        {"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2}]},
        {"annotations": [{"category_id": 2}]},
    ]
    out = with_fed_loss_counts(config, records, {"class_image_count": np.array([7, 0, 1])})
    assert out.model.roi_box_head.fed_loss_image_counts == (7, 0, 1)
    assert config.model.roi_box_head.fed_loss_image_counts == ()  # a copy
    out = with_fed_loss_counts(config, records, {})
    assert out.model.roi_box_head.fed_loss_image_counts == (1, 0, 2)
    with pytest.raises(ValueError, match="one image count per class"):
        with_fed_loss_counts(config, records, {"class_image_count": np.array([1, 2])})


def test_config_rules_and_yaml_import(tmp_path):
    from jax_rcnn import config as cfg_lib

    config = _fed_config()
    config.model.roi_box_head.use_sigmoid_ce = False
    with pytest.raises(ValueError, match="use_fed_loss.*needs use_sigmoid_ce"):
        cfg_lib.validate(config)
    config = _fed_config()
    config.model.roi_box_head.fed_loss_image_counts = (1, 2)
    with pytest.raises(ValueError, match="fed_loss_image_counts.*must be \\(\\) or 4 ints"):
        cfg_lib.validate(config)
    base = (
        pathlib.Path(__file__).resolve().parents[1] / "data/detectron2_configs/Base-RCNN-FPN.yaml"
    )
    yml = tmp_path / "fed.yaml"
    yml.write_text(
        f'_BASE_: "{base}"\nMODEL:\n  ROI_BOX_HEAD:\n    USE_SIGMOID_CE: true\n'
        "    USE_FED_LOSS: true\n    FED_LOSS_NUM_CLASSES: 30\n"
        "    FED_LOSS_FREQ_WEIGHT_POWER: 0.25\n"
    )
    bh = cfg_lib.from_detectron2(yml).model.roi_box_head
    assert (bh.use_sigmoid_ce, bh.use_fed_loss) == (True, True)
    assert (bh.fed_loss_num_classes, bh.fed_loss_freq_weight_power) == (30, 0.25)
