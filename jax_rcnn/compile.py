"""`jit`: `jax.jit` with the XLA options this project's programs need on CPU.

Every entry point that compiles a model program (`Predictor`, the train step, evaluation, the
benchmarks, exported-model runners) goes through `jit` instead of `jax.jit`.

Why (measured on the 2-core AVX2 dev CPU, jaxlib 0.10.2, f32; `benchmarks/RESULTS.md`): XLA:CPU
hands convolutions to YNNPACK fusions by default. For this model that is much slower than
XLA's own Eigen convolutions, and catastrophically so for convolution *weight gradients*:

    op (batch 2, 200x336x256, 3x3 -> 256)   YNNPACK (default)   Eigen (YNN off)
    forward                                 112 GFLOP/s         162 GFLOP/s
    input gradient                          112 GFLOP/s         164 GFLOP/s
    weight gradient                          13 GFLOP/s         141 GFLOP/s

which made the full-size R50-FPN train step 72-127 s instead of ~20 s. `jit` therefore compiles
with `xla_cpu_experimental_ynn_fusion_type` empty (no YNNPACK fusions) on CPU, per program, so it
works whenever JAX was initialised and touches nothing else in the user's process. The option is
left alone where it does not apply: on other backends, when the user set it in `XLA_FLAGS`
themselves, or when the installed XLA does not know it (checked once with a tiny compile).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax

logger = logging.getLogger(__name__)

CPU_COMPILER_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""XLA debug options applied to every CPU program compiled through `jit`."""


@functools.cache
def _cpu_options_supported() -> bool:
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception as e:  # noqa: BLE001 - any rejection means "not supported here"
        logger.warning("XLA rejected %s (%s); compiling with XLA defaults", CPU_COMPILER_OPTIONS, e)
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """The XLA options `jit` compiles with on `backend` (default: JAX's default backend).

    Returns:
      `CPU_COMPILER_OPTIONS` on CPU, unless `XLA_FLAGS` already sets one of them or this XLA does
      not accept them; None (XLA defaults) otherwise.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    if any(f"--{name}" in flags for name in CPU_COMPILER_OPTIONS):
        return None
    return dict(CPU_COMPILER_OPTIONS) if _cpu_options_supported() else None


def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
    """`jax.jit(fun, **kwargs)` with `compiler_options()` (see the module docstring).

    Options passed in `kwargs["compiler_options"]` take precedence over ours.
    """
    options = compiler_options()
    if options or kwargs.get("compiler_options"):
        kwargs["compiler_options"] = {**(options or {}), **(kwargs.get("compiler_options") or {})}
    return jax.jit(fun, **kwargs)
