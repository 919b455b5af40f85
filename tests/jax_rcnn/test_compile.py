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
