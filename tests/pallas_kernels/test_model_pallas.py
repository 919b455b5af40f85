"""The full model gives the same detections with the Pallas kernels (interpreted) as with the
pure-JAX references: the kernels are drop-in replacements behind `jax_rcnn.kernels`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import modeling
from jax_rcnn.config import load_config
from jax_rcnn.meta_arch import rcnn


@pytest.mark.slow
def test_smoke_model_pallas_matches_reference():
    config = load_config("configs/mask_rcnn_R_50_FPN_1x.py:smoke")
    model = modeling.build_model(config)
    variables = modeling.init_variables(model, jax.random.key(0), (128, 160))
    images = jax.random.uniform(jax.random.key(1), (1, 128, 160, 3), jnp.float32, 0, 255)
    image_sizes = jnp.asarray([[128, 150]], jnp.int32)
    original_sizes = jnp.asarray([[256, 300]], jnp.int32)

    def run(backend):
        fn = jax.jit(
            lambda v, x: rcnn.inference(
                model, v, x, image_sizes, original_sizes, config=config, backend=backend
            )
        )
        return jax.tree.map(np.asarray, fn(variables, images))

    want = run("reference")
    got = run("pallas")  # interpret mode off GPU
    assert got.keys() == want.keys()
    assert want["proposal_valid"].any() and want["valid"].any(), "vacuous test: no detections"
    for key in ("proposal_valid", "valid", "classes"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in sorted(set(want) - {"proposal_valid", "valid", "classes"}):
        # Same kernels' arithmetic up to float32 summation order in the pooled features.
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4, err_msg=key)
