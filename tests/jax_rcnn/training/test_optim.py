"""Solver parity with Detectron2's `solver/build.py` and `solver/lr_scheduler.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jax_rcnn.training import optim
from tests.jax_rcnn.training.conftest import tiny_params


def _d2_1x():
    return optim.warmup_multistep_schedule(
        0.02, steps=(60000, 80000), gamma=0.1, warmup_factor=0.001, warmup_iters=1000
    )


@pytest.mark.parametrize(
    "it, expected",
    [
        (0, 0.02 * 0.001),
        (1, 0.02 * (0.001 * (1 - 1e-3) + 1e-3)),
        (500, 0.02 * (0.001 * 0.5 + 0.5)),
        (999, 0.02 * (0.001 * 0.001 + 0.999)),
        (1000, 0.02),
        (59999, 0.02),
        (60000, 0.002),
        (60001, 0.002),
        (79999, 0.002),
        (80000, 0.0002),
        (89999, 0.0002),
    ],
)
def test_warmup_multistep_matches_detectron2(it, expected):
    lr = _d2_1x()
    np.testing.assert_allclose(lr(it), expected, rtol=1e-12)
    # The traced (f32) path used inside the train step agrees to f32 precision.
    np.testing.assert_allclose(float(jax.jit(lr)(jnp.int32(it))), expected, rtol=1e-6)


def test_constant_warmup_and_no_warmup():
    lr = optim.warmup_multistep_schedule(
        1.0, steps=(5,), warmup_factor=0.1, warmup_iters=3, warmup_method="constant"
    )
    assert [lr(i) for i in range(7)] == pytest.approx([0.1, 0.1, 0.1, 1, 1, 0.1, 0.1])
    lr = optim.warmup_multistep_schedule(1.0, steps=(2,), warmup_iters=0)
    assert [lr(i) for i in range(4)] == pytest.approx([1, 1, 0.1, 0.1])


def _d2_cosine_reference(it, base_lr, max_iter, end_lr, factor, warmup_iters):
    """Detectron2's WarmupParamScheduler(CosineParamScheduler(1, end), warmup_factor,
    warmup_iters / max_iter) read by LRMultiplier at `it / max_iter`, written out."""
    where = it / max_iter
    end = end_lr / base_lr

    def cos_sched(w):
        return end + 0.5 * (1 - end) * (1 + np.cos(np.pi * w))

    warm_len = min(warmup_iters / max_iter, 1.0)
    if where < warm_len:
        lo, hi = factor * cos_sched(0.0), cos_sched(warm_len)
        return base_lr * (lo + (hi - lo) * where / warm_len)
    return base_lr * cos_sched(where)


@pytest.mark.parametrize("end_lr", [0.0, 0.004])
def test_warmup_cosine_matches_detectron2(end_lr):
    lr = optim.warmup_cosine_schedule(
        0.04, max_iter=1600, base_lr_end=end_lr, warmup_factor=0.001, warmup_iters=100
    )
    jlr = jax.jit(lr)
    for it in (0, 1, 50, 99, 100, 101, 800, 1200, 1599):
        want = _d2_cosine_reference(it, 0.04, 1600, end_lr, 0.001, 100)
        np.testing.assert_allclose(lr(it), want, rtol=1e-12)
        np.testing.assert_allclose(float(jlr(jnp.int32(it))), want, rtol=2e-5, atol=1e-9)
    assert lr(800) == pytest.approx(0.02 + end_lr / 2)
    assert lr(1600) == pytest.approx(end_lr)


def test_lr_scheduler_name_selects_schedule_and_rejects_unknown(smoke_config):
    c = smoke_config
    c.solver.lr_scheduler_name = "WarmupCosineLR"
    c.solver.max_iter, c.solver.warmup_iters, c.solver.base_lr = 10, 0, 1.0
    assert optim.build_lr_schedule(c)(5) == pytest.approx(0.5)
    c.solver.lr_scheduler_name = "WarmupPolyLR"
    with pytest.raises(ValueError, match="WarmupPolyLR.*known"):
        optim.build_lr_schedule(c)
    c.solver.lr_scheduler_name = "WarmupCosineLR"
    c.solver.base_lr_end = 2.0
    with pytest.raises(ValueError, match="base_lr_end"):
        optim.build_lr_schedule(c)


def test_param_groups_follow_get_default_optimizer_params(smoke_config):
    c = smoke_config
    c.solver.weight_decay, c.solver.weight_decay_norm, c.solver.bias_lr_factor = 1e-4, 0.0, 2.0
    hp = traverse_util.flatten_dict(optim.param_hyperparams(tiny_params(), c))
    bb = ("backbone", "bottom_up")
    assert hp[(*bb, "stem", "conv1", "kernel")] is None  # freeze_at=2: stem, res2 frozen
    assert hp[(*bb, "res2_0", "conv1", "kernel")] is None
    assert hp[(*bb, "res3_0", "conv1", "kernel")] == (1.0, 1e-4)
    assert hp[(*bb, "res3_0", "conv1", "norm", "scale")] == (1.0, 0.0)
    # The "bias" override comes last in Detectron2: a norm bias gets weight_decay_bias too.
    assert hp[(*bb, "res3_0", "conv1", "norm", "bias")] == (2.0, 1e-4)
    assert hp[("backbone", "fpn_lateral2", "bias")] == (2.0, 1e-4)
    assert hp[("roi_heads", "box_predictor", "cls_score", "kernel")] == (1.0, 1e-4)


def _torch_sgd_reference(p, grads, lrs, wd, momentum, nesterov):
    """`torch.optim.SGD.step` written out in NumPy (dampening 0)."""
    p, buf = np.array(p, np.float64), None
    for g, lr in zip(grads, lrs, strict=True):
        d = np.asarray(g, np.float64) + wd * p
        buf = d.copy() if buf is None else momentum * buf + d
        step = d + momentum * buf if nesterov else buf
        p = p - lr * step
    return p


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_per_group(smoke_config, nesterov):
    c = smoke_config
    c.solver.base_lr, c.solver.warmup_iters, c.solver.steps = 0.1, 2, (3,)
    c.solver.weight_decay, c.solver.weight_decay_norm, c.solver.bias_lr_factor = 0.01, 0.0, 2.0
    c.solver.nesterov = nesterov
    params = tiny_params()
    tx = optim.build_optimizer(c)
    state = tx.init(params)
    rng = np.random.default_rng(1)
    grads_seq = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(5)]
    p = params
    for g in grads_seq:
        g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
    lrs = [optim.build_lr_schedule(c)(i) for i in range(5)]
    hp = traverse_util.flatten_dict(optim.param_hyperparams(params, c))
    flat_p = traverse_util.flatten_dict(p)
    flat0 = traverse_util.flatten_dict(params)
    for path, h in hp.items():
        gs = [traverse_util.flatten_dict(g)[path] for g in grads_seq]
        if h is None:
            np.testing.assert_array_equal(flat_p[path], flat0[path])
            continue
        ref = _torch_sgd_reference(flat0[path], gs, [lr * h[0] for lr in lrs], h[1], 0.9, nesterov)
        np.testing.assert_allclose(flat_p[path], ref, rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_frozen_params_are_bit_identical_and_stateless(smoke_config):
    params = tiny_params()
    tx = optim.build_optimizer(smoke_config)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    new = traverse_util.flatten_dict(optax.apply_updates(params, updates))
    old = traverse_util.flatten_dict(params)
    stem = ("backbone", "bottom_up", "stem", "conv1", "kernel")
    assert np.array_equal(
        np.asarray(new[stem]).view(np.uint32), np.asarray(old[stem]).view(np.uint32)
    )
    assert not np.array_equal(
        new[("backbone", "fpn_lateral2", "bias")], old[("backbone", "fpn_lateral2", "bias")]
    )
    # No momentum buffer is allocated for frozen leaves.
    num_state = sum(x.size for x in jax.tree.leaves(state))
    num_train = sum(v.size for k, v in old.items() if k[2] not in ("stem", "res2_0"))
    assert num_state <= num_train + 16  # + step counters


def test_per_param_gradient_clipping():
    g = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([0.1, -5.0, 0.2])}
    out, _ = optim.per_param_clipping("value", 1.0).update(g, None)
    np.testing.assert_allclose(out["a"], [1.0, -1.0])
    np.testing.assert_allclose(out["b"], [0.1, -1.0, 0.2])
    out, _ = optim.per_param_clipping("norm", 1.0, 2.0).update(g, None)
    # Each tensor separately (torch clip_grad_norm_ on one tensor): ||a|| = 5 -> a / (5 + 1e-6).
    np.testing.assert_allclose(out["a"], np.array([3.0, -4.0]) / (5 + 1e-6), rtol=1e-6)
    nb = np.linalg.norm([0.1, -5.0, 0.2])
    np.testing.assert_allclose(out["b"], np.array([0.1, -5.0, 0.2]) / (nb + 1e-6), rtol=1e-6)
    small = {"a": jnp.array([0.3, 0.4])}
    out, _ = optim.per_param_clipping("norm", 1.0).update(small, None)
    np.testing.assert_array_equal(out["a"], small["a"])
