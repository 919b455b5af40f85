"""Checkpoints: round trip, retention, and a clear error for another model's work dir."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn.training import checkpointing
from jax_rcnn.training.state import create_train_state
from tests.jax_rcnn.training.conftest import tiny_params


def _state(config, step=0, seed=0):
    variables = {"params": tiny_params(seed), "frozen": {"n": {"running_var": jnp.ones(3)}}}
    return create_train_state(config, variables, step=step)


def test_round_trip_and_retention(tmp_path, smoke_config):
    smoke_config.solver.max_to_keep = 2
    ckpt = checkpointing.Checkpointer(tmp_path, smoke_config)
    assert ckpt.latest_step() is None
    for step in (2, 4, 6):
        assert ckpt.save(_state(smoke_config, step, seed=step), {"position": step})
    assert not ckpt.save(_state(smoke_config, 6), {"position": 6})  # already there
    assert ckpt.all_steps() == [4, 6]
    abstract = jax.eval_shape(lambda: _state(smoke_config))
    ckpt.check_compatible(abstract)
    state, data = ckpt.restore(abstract)
    assert data == {"position": 6} and int(state.step) == 6
    want = jax.tree.leaves(_state(smoke_config, 6, seed=6))
    for a, b in zip(jax.tree.leaves(state), want, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    ckpt.close()
    variables = checkpointing.load_variables(tmp_path)
    assert set(variables) == {"params", "frozen"}
    np.testing.assert_array_equal(variables["frozen"]["n"]["running_var"], np.ones(3))


def test_other_models_checkpoint_is_a_clear_error(tmp_path, smoke_config):
    ckpt = checkpointing.Checkpointer(tmp_path, smoke_config)
    ckpt.save(_state(smoke_config, 1), {})
    ckpt.close()
    # Same config, other variable shapes.
    other = {"params": {**tiny_params(), "extra": {"kernel": jnp.zeros((2, 2))}}}
    abstract = jax.eval_shape(lambda: create_train_state(smoke_config, other))
    with pytest.raises(checkpointing.CheckpointMismatchError, match="params/extra/kernel"):
        checkpointing.Checkpointer(tmp_path, smoke_config).check_compatible(abstract)
    # A model key differs.
    smoke_config.model.fpn.out_channels = 32
    abstract = jax.eval_shape(lambda: _state(smoke_config))
    with pytest.raises(checkpointing.CheckpointMismatchError, match="model.fpn.out_channels"):
        checkpointing.Checkpointer(tmp_path, smoke_config).check_compatible(abstract)
    # A solver key may change (e.g. a longer schedule): only a warning.
    smoke_config.model.fpn.out_channels = 16
    smoke_config.solver.max_iter = 100
    checkpointing.Checkpointer(tmp_path, smoke_config).check_compatible(abstract)
