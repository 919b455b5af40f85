"""Detectron2's solver in optax: SGD with momentum, per-parameter hyper-parameters, schedule.

**Parity:** `detectron2/solver/build.py` and `solver/lr_scheduler.py`.

* `get_default_optimizer_params`: every parameter starts from `(lr=base_lr,
  weight_decay=weight_decay)`; parameters of normalisation layers (BN, SyncBN, FrozenBN, GN, ...)
  get `weight_decay_norm`; then the `"bias"` override, applied to *every* parameter named
  `bias` (norm biases included, as the override is applied last), sets
  `lr = base_lr * bias_lr_factor` and `weight_decay = weight_decay_bias` (default:
  `weight_decay`). Here a parameter belongs to a normalisation layer when its module is named
  `norm` (`jax_rcnn.modeling.layers.get_norm` names every one so); Flax's BN/GN `scale` is
  PyTorch's `weight`.
* `torch.optim.SGD(momentum, nesterov)`: `buf = momentum * buf + (g + wd * p)` (the first step
  `buf = g + wd * p`), `p -= lr * buf` (nesterov: `p -= lr * (g + wd * p + momentum * buf)`).
  The learning rate multiplies *after* the momentum buffer, so per-group learning rates are a
  constant factor after `optax.trace` and a schedule change does not rescale the buffer.
* `maybe_add_gradient_clipping`: applied to the raw gradients before weight decay, **per
  parameter tensor**: "value" clamps each element to `[-clip_value, clip_value]`
  (`clip_grad_value_`); "norm" rescales each tensor by `min(1, clip_value / (||g||_p + 1e-6))`
  (`clip_grad_norm_` called on one tensor at a time).
* `build_lr_scheduler` ("WarmupMultiStepLR"): `MultiStepParamScheduler` (x `gamma` at each of
  `steps`) wrapped in `WarmupParamScheduler`: for `it < warmup_iters` the factor goes linearly
  from `warmup_factor * multistep(0)` to `multistep(warmup_iters)` ("constant":
  `warmup_factor * multistep(0)`). Iteration `it` (0-based) is trained with `lr(it)`: Detectron2
  steps the scheduler after each optimizer step, and logs `lr` before stepping it.
* `FREEZE_AT`: parameters marked by `jax_rcnn.modeling.frozen_param_mask` get no update at all
  (`requires_grad=False`): no weight decay, no momentum, no state.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jax_rcnn.config import LR_SCHEDULERS
from jax_rcnn.modeling import frozen_param_mask

FROZEN_LABEL = "frozen"


def multistep_factor(it, steps: Sequence[int], gamma: float):
    """`gamma ** bisect_right(steps, it)`: works on Python ints and on traced arrays."""
    if isinstance(it, int):
        return gamma ** bisect.bisect_right(list(steps), it)
    passed = sum((it >= s).astype(jnp.int32) for s in steps) if steps else 0
    return jnp.asarray(gamma, jnp.float32) ** passed


def _with_warmup(
    base_lr: float,
    factor: Callable[[Any], Any],
    *,
    warmup_factor: float,
    warmup_iters: int,
    warmup_method: str,
) -> Callable[[Any], Any]:
    """Detectron2's `WarmupParamScheduler` around a schedule's LR `factor(it)` (a Python int or
    a traced count): for `it < warmup_iters` the factor rises linearly from `warmup_factor *
    factor(0)` to `factor(warmup_iters)` ("constant": stays at the start).

    Returns `lr(it)`: a Python float for an int `it`, an f32 scalar for a traced step count.
    """
    if warmup_method not in ("linear", "constant"):
        raise ValueError(f"unknown warmup_method {warmup_method!r}")
    start = warmup_factor * factor(0)
    end = factor(int(warmup_iters))

    def warm(it):
        if warmup_method == "constant":
            return start
        alpha = it / warmup_iters if warmup_iters else 1.0
        return start + (end - start) * alpha

    def lr(it):
        if isinstance(it, int):
            return base_lr * (warm(it) if it < warmup_iters else factor(it))
        it = jnp.asarray(it)
        factor_now = jnp.where(it < warmup_iters, warm(it.astype(jnp.float32)), factor(it))
        return (base_lr * factor_now).astype(jnp.float32)

    return lr


def warmup_multistep_schedule(
    base_lr: float,
    *,
    steps: Sequence[int],
    gamma: float = 0.1,
    warmup_factor: float = 0.001,
    warmup_iters: int = 1000,
    warmup_method: str = "linear",
) -> Callable[[Any], Any]:
    """Detectron2's "WarmupMultiStepLR": the learning rate used at iteration `it` (0-based).

    Example (Detectron2's 1x: base_lr 0.02, steps (60000, 80000), warm-up 1000 from 0.001):
    `lr(0) = 2e-5`, `lr(500) = 0.02 * (0.001 * 0.5 + 0.5) = 0.01001`, `lr(1000) = 0.02`,
    `lr(59999) = 0.02`, `lr(60000) = 0.002`, `lr(80000) = 0.0002`.

    Args:
      base_lr: `SOLVER.BASE_LR`.
      steps: `SOLVER.STEPS`, increasing.
      gamma: `SOLVER.GAMMA`.
      warmup_factor: `SOLVER.WARMUP_FACTOR`.
      warmup_iters: `SOLVER.WARMUP_ITERS` (0 = no warm-up).
      warmup_method: "linear" or "constant".

    Returns:
      `lr(it)`: a Python float for an int `it`, an f32 scalar for a traced step count.
    """
    steps = tuple(int(s) for s in steps)
    return _with_warmup(
        base_lr,
        lambda it: multistep_factor(it, steps, gamma),
        warmup_factor=warmup_factor,
        warmup_iters=warmup_iters,
        warmup_method=warmup_method,
    )


def warmup_cosine_schedule(
    base_lr: float,
    *,
    max_iter: int,
    base_lr_end: float = 0.0,
    warmup_factor: float = 0.001,
    warmup_iters: int = 1000,
    warmup_method: str = "linear",
) -> Callable[[Any], Any]:
    """Detectron2's "WarmupCosineLR": the learning rate used at iteration `it` (0-based).

    Detectron2 builds it as `WarmupParamScheduler(CosineParamScheduler(1, end))` under
    `LRMultiplier(max_iter)`: the factor at `it` is `end + (1 - end) * (1 + cos(pi * it /
    max_iter)) / 2` with `end = base_lr_end / base_lr`; during the warm-up it rises linearly
    from `warmup_factor` to the cosine's value at `warmup_iters` ("constant": stays at
    `warmup_factor`).

    Example (base_lr 0.04, max_iter 1600, warm-up 100): `lr(0) = 4e-5`, `lr(800) = 0.02`,
    `lr(1599) = 3.9e-8`.

    Args:
      base_lr: `SOLVER.BASE_LR`.
      max_iter: `SOLVER.MAX_ITER`.
      base_lr_end: `SOLVER.BASE_LR_END`, the learning rate the cosine ends at.
      warmup_factor, warmup_iters, warmup_method: as `warmup_multistep_schedule`.

    Returns:
      `lr(it)`: a Python float for an int `it`, an f32 scalar for a traced step count.
    """
    if not 0.0 <= base_lr_end <= base_lr:
        raise ValueError(f"solver.base_lr_end={base_lr_end} must lie in [0, base_lr={base_lr}]")
    end_value = base_lr_end / base_lr if base_lr else 0.0

    def cosine(it):
        if isinstance(it, int):
            return end_value + (1.0 - end_value) * 0.5 * (1.0 + math.cos(math.pi * it / max_iter))
        where = jnp.asarray(it).astype(jnp.float32) / max_iter
        return end_value + (1.0 - end_value) * 0.5 * (1.0 + jnp.cos(jnp.pi * where))

    return _with_warmup(
        base_lr,
        cosine,
        warmup_factor=warmup_factor,
        warmup_iters=min(int(warmup_iters), max_iter),  # Detectron2: min(length, 1.0)
        warmup_method=warmup_method,
    )


def build_lr_schedule(config) -> Callable[[Any], Any]:
    """The `config.solver.lr_scheduler_name` schedule ("WarmupMultiStepLR" or
    "WarmupCosineLR") for `config.solver`, in absolute LR units."""
    s = config.solver
    warmup = dict(
        warmup_factor=s.warmup_factor, warmup_iters=s.warmup_iters, warmup_method=s.warmup_method
    )
    if s.lr_scheduler_name == "WarmupMultiStepLR":
        return warmup_multistep_schedule(
            s.base_lr,
            steps=tuple(x for x in s.steps if x <= s.max_iter),  # Detectron2 drops later steps
            gamma=s.gamma,
            **warmup,
        )
    if s.lr_scheduler_name == "WarmupCosineLR":
        return warmup_cosine_schedule(
            s.base_lr, max_iter=s.max_iter, base_lr_end=s.base_lr_end, **warmup
        )
    raise ValueError(
        f"unsupported solver.lr_scheduler_name {s.lr_scheduler_name!r} (known: {LR_SCHEDULERS})"
    )


def per_param_clipping(clip_type: str, clip_value: float, norm_type: float = 2.0):
    """Detectron2's per-parameter gradient clipper as an optax transformation.

    Args:
      clip_type: "value" (`clip_grad_value_`) or "norm" (`clip_grad_norm_` on each tensor).
      clip_value: the bound, or the max norm.
      norm_type: p of the p-norm ("norm" only; `inf` = max-abs).
    """
    if clip_type == "value":
        clip = lambda g: jnp.clip(g, -clip_value, clip_value)  # noqa: E731
    elif clip_type == "norm":

        def clip(g):
            a = jnp.abs(g.astype(jnp.float32))
            if norm_type == float("inf"):
                norm = jnp.max(a)
            else:
                norm = jnp.sum(a**norm_type) ** (1.0 / norm_type)
            coef = jnp.minimum(clip_value / (norm + 1e-6), 1.0)
            return (g * coef).astype(g.dtype)

    else:
        raise ValueError(f"unknown clip_type {clip_type!r}; expected 'value' or 'norm'")

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def param_hyperparams(
    params: Any,
    config,
) -> Any:
    """Pytree like `params` of `(lr_factor, weight_decay)` per leaf, or `None` when frozen.

    `get_default_optimizer_params` of Detectron2 (module docstring), with
    `weight_decay_bias = config.solver.get("weight_decay_bias")` (None = `weight_decay`).
    """
    s = config.solver
    wd_bias = s.get("weight_decay_bias", None)
    wd_bias = s.weight_decay if wd_bias is None else wd_bias
    frozen = traverse_util.flatten_dict(frozen_param_mask(params, config))
    out = {}
    for path in traverse_util.flatten_dict(params):
        if frozen[path]:
            out[path] = None
            continue
        lr_factor, wd = 1.0, s.weight_decay
        if len(path) >= 2 and path[-2] == "norm":
            wd = s.weight_decay_norm
        if path[-1] == "bias":
            lr_factor, wd = s.bias_lr_factor, wd_bias
        out[path] = (float(lr_factor), float(wd))
    return traverse_util.unflatten_dict(out)


def _label(hp) -> str:
    return FROZEN_LABEL if hp is None else f"lr_x{hp[0]!r}/wd{hp[1]!r}"


def param_labels(params: Any, config) -> Any:
    """Pytree like `params` of group labels, e.g. `"lr_x1.0/wd0.0001"`, `"frozen"`."""
    hps = traverse_util.flatten_dict(param_hyperparams(params, config))
    return traverse_util.unflatten_dict({k: _label(v) for k, v in hps.items()})


def build_optimizer(config) -> optax.GradientTransformation:
    """The whole Detectron2 solver for `config.solver` as one optax transformation.

    Each group of parameters with the same `(lr_factor, weight_decay)` gets
    `clip -> add_decayed_weights(wd) -> trace(momentum, nesterov) -> scale(-lr(step) * factor)`;
    frozen parameters get `set_to_zero` (no state). Labels are computed from the params tree
    at `init`/`update`, so the same transformation serves any model built from `config`.

    Args:
      config: jax_rcnn config (`config.solver.*`, `config.model.backbone.freeze_at`).

    Returns:
      The transformation; `optax.apply_updates(params, updates)` applies a step.
    """
    s = config.solver
    schedule = build_lr_schedule(config)
    clip = s.clip_gradients

    def group(lr_factor: float, wd: float) -> optax.GradientTransformation:
        parts = []
        if clip.enabled:
            parts.append(per_param_clipping(clip.clip_type, clip.clip_value, clip.norm_type))
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        if s.momentum:
            parts.append(optax.trace(decay=s.momentum, nesterov=s.nesterov))
        parts.append(optax.scale_by_schedule(lambda count: -lr_factor * schedule(count)))
        return optax.chain(*parts)

    def labels(params):
        return param_labels(params, config)

    def transforms_for(params) -> dict[str, optax.GradientTransformation]:
        hps = traverse_util.flatten_dict(param_hyperparams(params, config))
        out = {FROZEN_LABEL: optax.set_to_zero()}
        for hp in set(hps.values()) - {None}:
            out[_label(hp)] = group(*hp)
        return out

    def init_fn(params):
        return optax.multi_transform(transforms_for(params), labels).init(params)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("build_optimizer's update needs params (weight decay, labels)")
        tx = optax.multi_transform(transforms_for(params), labels)
        return tx.update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)
