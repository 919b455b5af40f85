"""The jitted train step: one compile per bucket, frozen params untouched, NaN guard, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_rcnn.training import optim
from jax_rcnn.training.state import create_train_state, make_train_step
from tests.jax_rcnn.training.conftest import batch, make_stub_loss, tiny_params

STEM = ("backbone", "bottom_up", "stem", "conv1", "kernel")
FPN_BIAS = ("backbone", "fpn_lateral2", "bias")


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree))


def test_one_step_updates_trainable_and_keeps_frozen_bits(smoke_config):
    state = create_train_state(smoke_config, {"params": tiny_params()})
    before = _flat(state.params)
    step = make_train_step(smoke_config, make_stub_loss())
    state, metrics = step(state, batch(), jax.random.key(0))
    after = _flat(state.params)
    assert int(state.step) == 1
    assert after[STEM].tobytes() == before[STEM].tobytes()
    assert not np.array_equal(after[FPN_BIAS], before[FPN_BIAS])
    assert set(metrics) >= {"loss_a", "loss_b", "total_loss", "lr", "grad_norm", "finite"}
    assert float(metrics["num_things"]) == 3.0
    np.testing.assert_allclose(
        metrics["total_loss"], metrics["loss_a"] + metrics["loss_b"], rtol=1e-6
    )
    np.testing.assert_allclose(metrics["lr"], optim.build_lr_schedule(smoke_config)(0), rtol=1e-6)


def test_compiles_once_per_bucket(smoke_config):
    traces = []
    step = make_train_step(smoke_config, make_stub_loss(traces))
    state = create_train_state(smoke_config, {"params": tiny_params()})
    key = jax.random.key(0)
    for i, shape in enumerate([(2, 32, 48), (2, 48, 32), (2, 32, 48), (2, 48, 32), (2, 32, 48)]):
        state, _ = step(state, batch(shape, seed=i), key)
    assert int(state.step) == 5
    assert traces == [(2, 32, 48, 3), (2, 48, 32, 3)]


def test_step_key_is_fold_in_of_step(smoke_config):
    seen = []

    def loss_fn(variables, b, key):
        del b
        seen.append(None)
        return {
            "loss": jnp.sum(variables["params"]["roi_heads"]["box_predictor"]["cls_score"]["bias"])
            * 0
            + jax.random.uniform(key)
        }

    step = make_train_step(smoke_config, loss_fn)
    state = create_train_state(smoke_config, {"params": tiny_params()}, step=7)
    base = jax.random.key(3)
    _, metrics = step(state, batch(), base)
    expected = jax.random.uniform(jax.random.fold_in(base, 7))
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_step_leaves_state_untouched(smoke_config, bad):
    step = make_train_step(smoke_config, make_stub_loss())
    state = create_train_state(smoke_config, {"params": tiny_params()})
    state, _ = step(state, batch(), jax.random.key(0))
    before = jax.device_get(state)
    state, metrics = step(state, batch(scale=bad), jax.random.key(0))
    assert not bool(metrics["finite"])
    assert int(state.step) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state)), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_bfloat16_loss_keeps_f32_state_and_batch_stats_update(smoke_config):
    def loss_fn(variables, b, key):
        out, aux = make_stub_loss(dtype=jnp.bfloat16)(variables, b, key)
        aux["updates"] = {"batch_stats": {"m": variables["batch_stats"]["m"] + 1.0}}
        return out, aux

    variables = {"params": tiny_params(), "batch_stats": {"m": jnp.zeros(3)}}
    state = create_train_state(smoke_config, variables)
    state, metrics = make_train_step(smoke_config, loss_fn)(state, batch(), jax.random.key(0))
    assert metrics["total_loss"].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(state.batch_stats["m"], np.ones(3))
