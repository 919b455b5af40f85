"""The train state and the jitted train step.

`make_train_step(config, loss_fn)` returns `step(state, batch, base_key) -> (state, metrics)`:
one `jax.jit` with the state donated, compiled once per padded batch shape (one per bucket).

* The per-step key is `fold_in(base_key, state.step)`: randomness is derived from the step
  count, never checkpointed, and a resumed run draws exactly what an uninterrupted one draws.
* Only the trainable `params` are differentiated; parameters frozen by `FREEZE_AT` are closed
  over as constants, so XLA prunes their backward pass, and they are carried over unchanged
  (bit for bit) rather than updated by zero.
* The total loss is the sum of the loss dict (Detectron2's `sum(loss_dict.values())`).
* `loss_state`: what a meta-architecture's losses carry from step to step (RetinaNet's EMA loss
  normaliser; empty for R-CNN). It reaches the loss function as the `loss_state` variable
  collection, comes back in `aux["updates"]["loss_state"]`, and is checkpointed with the rest,
  so a resumed run continues exactly.
* A non-finite total loss leaves the whole state untouched (step count included) and reports
  `finite = False`; the loop stops there, so nothing non-finite is ever saved.
* Compute dtype: the model reads `config.train.compute_dtype` ("bfloat16" runs convolutions and
  matmuls in bf16); parameters, gradients, optimizer state and losses stay f32.
* Data parallelism: with a `mesh` (`jax_rcnn.training.distributed.make_mesh()`) the state is
  replicated and the batch sharded over the mesh's `data` axis; the function sees the global
  batch, so losses, normalisers, gradients and metrics are those of the global batch and the
  same program runs on 1 device or on every device of every host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import Mesh

from jax_rcnn import meta_arch
from jax_rcnn.compile import jit as compile_jit
from jax_rcnn.meta_arch.common import LOSS_STATE
from jax_rcnn.modeling import FROZEN, frozen_param_mask
from jax_rcnn.training import distributed, optim

# loss_fn(variables, batch, key) -> (losses {name: f32[]}, aux dict), the signature of
# `jax_rcnn.meta_arch.<name>.forward_train` with model and config bound.
LossFn = Callable[[dict, dict, jax.Array], tuple[dict[str, jax.Array], dict[str, Any]]]


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step.

    Attributes:
      step: i32[] number of optimizer steps done (Detectron2's `iter` of the next step).
      params: trainable and frozen-by-`freeze_at` parameters (`params` collection).
      frozen: FrozenBN buffers (`frozen` collection), never changed.
      batch_stats: BN running statistics (empty without BN).
      opt_state: optimizer state (momentum buffers).
      loss_state: the losses' own state (`meta_arch.<name>.initial_loss_state`; `{}` for R-CNN).
    """

    step: jax.Array
    params: Any
    frozen: Any
    batch_stats: Any
    opt_state: Any
    loss_state: Any = flax.struct.field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        """The Flax variables dict for `model.apply`."""
        out = {"params": self.params}
        if self.frozen:
            out[FROZEN] = self.frozen
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


def create_train_state(config, variables: dict[str, Any], step: int = 0) -> TrainState:
    """A fresh state (new optimizer state) for `variables`.

    Args:
      config: jax_rcnn config (`config.solver`).
      variables: `init_variables(...)` or converted weights.
      step: initial step count.
    """
    params = variables["params"]
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        frozen=variables.get(FROZEN, {}),
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optim.build_optimizer(config).init(params),
        loss_state=meta_arch.get(config).initial_loss_state(config),
    )


def _split(params: Any, mask: dict) -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(params)
    train = {k: v for k, v in flat.items() if not mask[k]}
    fixed = {k: v for k, v in flat.items() if mask[k]}
    return train, fixed


def _merge(*parts: dict) -> Any:
    flat = {}
    for p in parts:
        flat.update(p)
    return traverse_util.unflatten_dict(flat)


def _normalise_loss_output(out) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict):
        return out[0], dict(out[1] or {})
    if isinstance(out, dict):
        return out, {}
    raise TypeError(f"loss_fn must return a loss dict or (loss dict, aux), got {type(out)}")


def make_train_step(config, loss_fn: LossFn, mesh: Mesh | None = None) -> Callable:
    """Builds the jitted, donated train step.

    Args:
      config: jax_rcnn config (solver, freeze_at).
      loss_fn: `loss_fn(variables, batch, key) -> (losses, aux)` or `-> losses`; `losses` is a
        dict of f32 scalars, summed into `total_loss`. Optional aux entries (those of
        `forward_train`): `aux["updates"]["batch_stats"]`, the new BN statistics;
        `aux["all_finite"]` bool[B], False when a proposal became non-finite (the step is then
        treated like a non-finite loss); scalar aux entries are reported as metrics.
      mesh: a `("data",)` mesh: `state`, `base_key` and the outputs are replicated over it and
        `batch` is sharded along its leading axis (`distributed.shard_batch`). None: plain
        `jit` (inputs and outputs where JAX puts them).

    Returns:
      `step(state, batch, base_key) -> (new_state, metrics)`. `metrics` holds every loss,
      `total_loss`, `lr` (the rate used by this step), `grad_norm` (global, trainable params,
      before clipping), `finite` (bool) and scalar aux entries. `state` is donated: do not use
      it after the call.
    """
    tx = optim.build_optimizer(config)
    schedule = optim.build_lr_schedule(config)

    def step(state: TrainState, batch: dict, base_key: jax.Array):
        mask = traverse_util.flatten_dict(frozen_param_mask(state.params, config))
        train_p, fixed_p = _split(state.params, mask)
        key = jax.random.fold_in(base_key, state.step)

        def total(train_flat):
            variables = {
                "params": _merge(train_flat, jax.lax.stop_gradient(fixed_p)),
                FROZEN: state.frozen,
                "batch_stats": state.batch_stats,
                LOSS_STATE: state.loss_state,
            }
            variables = {k: v for k, v in variables.items() if k == "params" or v}
            losses, aux = _normalise_loss_output(loss_fn(variables, batch, key))
            losses = {k: jnp.asarray(v, jnp.float32) for k, v in losses.items()}
            return sum(losses.values()), (losses, aux)

        (total_loss, (losses, aux)), grads_train = jax.value_and_grad(total, has_aux=True)(train_p)
        grads = _merge(grads_train, {k: jnp.zeros_like(v) for k, v in fixed_p.items()})
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # Frozen leaves are carried over as they were, bit for bit.
        new_params = _merge(_split(new_params, mask)[0], fixed_p)
        updates_aux = aux.get("updates", {})
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            batch_stats=updates_aux.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
            loss_state=updates_aux.get(LOSS_STATE, state.loss_state),
        )
        finite = jnp.isfinite(total_loss)
        if "all_finite" in aux:
            finite = finite & jnp.all(aux["all_finite"])
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        metrics = dict(losses)
        metrics.update(
            {k: v for k, v in aux.items() if k != "all_finite" and getattr(v, "ndim", 1) == 0}
        )
        metrics["total_loss"] = total_loss
        metrics["lr"] = schedule(state.step)
        metrics["grad_norm"] = optax.tree.norm(grads_train)
        metrics["finite"] = finite
        return new_state, metrics

    if mesh is None:
        return compile_jit(step, donate_argnums=(0,))
    repl, data = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    return compile_jit(
        step,
        in_shardings=(repl, data, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
