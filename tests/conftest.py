"""Session-wide test settings.

A persistent XLA compilation cache shared by this process and every subprocess the tests start
(`train.py` runs, multi-process training, exported artifacts): the same small models are
compiled many times, and on a 2-core CPU compiling dominates the suite's time. The cache only
skips recompiling identical programs; results are unchanged.
"""

import os
import tempfile

import jax

_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jax_rcnn_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
