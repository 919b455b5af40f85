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

Compilation cost is counted and cached:

* `setup_compilation_cache(config)`: JAX's persistent compilation cache, on by default in
  `$JAX_RCNN_CACHE/xla` (or `~/.cache/jax_rcnn/xla`), `config.train.compilation_cache_dir`
  to move it, "off" to disable; every program is cached (no minimum compile time, unless
  `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` says otherwise), so a repeated or resumed run
  compiles nothing. `JAX_COMPILATION_CACHE_DIR` set by the user wins.
* `compile_stats()`: programs compiled by XLA in this process and their seconds, and programs
  loaded from the persistent cache instead (from `jax.monitoring` events).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.monitoring

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


# ---------------------------------------------------------------------------------------------
# Persistent compilation cache and compile counting
# ---------------------------------------------------------------------------------------------
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # compile or cache load
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_stats = {"compiles": 0, "compile_seconds": 0.0, "cache_hits": 0, "cache_load_seconds": 0.0}
_stats_lock = threading.Lock()
_hit_flag = threading.local()  # the hit event comes first, in the thread that then loads


def _on_event(event: str, **kwargs: Any) -> None:
    if event == _CACHE_HIT_EVENT:
        _hit_flag.hit = True


def _on_duration(event: str, seconds: float, **kwargs: Any) -> None:
    if event != _BACKEND_COMPILE_EVENT:
        return
    hit = getattr(_hit_flag, "hit", False)
    _hit_flag.hit = False
    with _stats_lock:
        if hit:
            _stats["cache_hits"] += 1
            _stats["cache_load_seconds"] += seconds
        else:
            _stats["compiles"] += 1
            _stats["compile_seconds"] += seconds


@functools.cache
def _register_listeners() -> None:
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_stats() -> dict[str, float]:
    """Counters since this module's listeners were registered (the first call of this function
    or of `setup_compilation_cache`).

    Returns:
      {"compiles": programs XLA compiled, "compile_seconds": their time, "cache_hits": programs
      loaded from the persistent cache, "cache_load_seconds": their time}.
    """
    _register_listeners()
    with _stats_lock:
        return dict(_stats)


def default_cache_dir() -> str:
    """`$JAX_RCNN_CACHE/xla`, or `~/.cache/jax_rcnn/xla`."""
    root = os.environ.get("JAX_RCNN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jax_rcnn"
    )
    return os.path.join(root, "xla")


def setup_compilation_cache(config) -> str | None:
    """Turns on JAX's persistent compilation cache (call before the first compile).

    Args:
      config: reads `config.train.compilation_cache_dir` ("" = `default_cache_dir()`, "off" =
        no cache).

    Returns:
      The cache directory in use, or None when disabled. A directory the user gave JAX
      (`JAX_COMPILATION_CACHE_DIR`, `jax_compilation_cache_dir`) is kept as it is.
    """
    _register_listeners()
    wanted = str(config.train.compilation_cache_dir)
    current = jax.config.jax_compilation_cache_dir
    if current:
        logger.info("persistent compilation cache: %s (set by the user)", current)
        directory = current
    elif wanted == "off":
        logger.info("persistent compilation cache: off (config.train.compilation_cache_dir)")
        return None
    else:
        directory = os.path.abspath(os.path.expanduser(wanted or default_cache_dir()))
        os.makedirs(directory, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", directory)
    # Cache every program (the many small ones add up to seconds at start-up too), unless the
    # user chose JAX's thresholds.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if current:
        return current
    from jax._src import compilation_cache  # noqa: PLC0415 - private, re-read the new dir

    # JAX reads the directory once, at its first compile; a process that compiled before (a
    # test session, a notebook) needs the cache re-initialised to see it.
    compilation_cache.reset_cache()
    logger.info("persistent compilation cache: %s", directory)
    return directory
