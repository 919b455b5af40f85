"""jax_rcnn.compile.jit: XLA:CPU programs without YNNPACK convolution fusions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import compile as compile_lib


def _conv_grad(x, w):
    def loss(w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y * y)

    return jax.grad(loss)(w)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only XLA option")
def test_cpu_programs_are_compiled_without_ynn_fusions():
    x = jnp.ones((1, 8, 8, 16))
    w = jnp.full((3, 3, 16, 16), 0.01)
    ours = compile_lib.jit(_conv_grad).lower(x, w).compile().as_text()
    assert "__ynn_fusion" not in ours
    np.testing.assert_allclose(
        compile_lib.jit(_conv_grad)(x, w), jax.jit(_conv_grad)(x, w), rtol=1e-5
    )


def test_options_only_on_cpu_and_not_over_user_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compile_lib.compiler_options("gpu") is None
    if compile_lib._cpu_options_supported():
        assert compile_lib.compiler_options("cpu") == compile_lib.CPU_COMPILER_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert compile_lib.compiler_options("cpu") is None


def test_caller_options_take_precedence(monkeypatch):
    seen = {}

    def fake_jit(fun, **kwargs):
        seen.update(kwargs)
        return fun

    monkeypatch.setattr(compile_lib.jax, "jit", fake_jit)
    monkeypatch.setattr(compile_lib, "compiler_options", lambda: {"a": "1", "b": "2"})
    compile_lib.jit(lambda x: x, compiler_options={"b": "3"}, donate_argnums=(0,))
    assert seen == {"compiler_options": {"a": "1", "b": "3"}, "donate_argnums": (0,)}


_TWICE = """
import json, sys
import jax.numpy as jnp
import ml_collections
from jax_rcnn import compile as C
config = ml_collections.ConfigDict({"train": {"compilation_cache_dir": sys.argv[1]}})
C.setup_compilation_cache(config)
y = C.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((32, 32)))
float((y + jnp.arange(32.0)).sum())
print(json.dumps(C.compile_stats()))
"""


def test_persistent_cache_second_process_compiles_nothing(tmp_path):
    """The same programs in a second process are loaded from the cache: zero XLA compiles."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"}
    for key in [k for k in env if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))]:
        del env[key]  # the test session's own JAX cache settings (tests/conftest.py)
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", _TWICE, str(tmp_path / "xla")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0]["compiles"] >= 2 and runs[0]["cache_hits"] == 0
    assert runs[1]["compiles"] == 0 and runs[1]["cache_hits"] == runs[0]["compiles"]


def test_cache_can_be_disabled_and_defaults_to_the_user_cache_dir(monkeypatch, tmp_path):
    import ml_collections

    monkeypatch.setenv("JAX_RCNN_CACHE", str(tmp_path))
    assert compile_lib.default_cache_dir() == str(tmp_path / "xla")
    off = ml_collections.ConfigDict({"train": {"compilation_cache_dir": "off"}})
    # A directory already given to JAX (by the user, or an earlier test's run) is kept.
    assert compile_lib.setup_compilation_cache(off) == jax.config.jax_compilation_cache_dir
