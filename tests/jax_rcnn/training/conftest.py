"""Small hand-made parameter trees shaped like the model's, for fast solver tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn.config import load_config


def tiny_params(seed: int = 0) -> dict:
    """A params tree with the model's path conventions (frozen stem/res2, norm, biases)."""
    rng = np.random.default_rng(seed)
    a = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    return {
        "backbone": {
            "bottom_up": {
                "stem": {"conv1": {"kernel": a(3, 3, 3, 4)}},
                "res2_0": {"conv1": {"kernel": a(1, 1, 4, 4)}},
                "res3_0": {
                    "conv1": {"kernel": a(1, 1, 4, 4), "norm": {"scale": a(4), "bias": a(4)}}
                },
            },
            "fpn_lateral2": {"kernel": a(1, 1, 4, 4), "bias": a(4)},
        },
        "roi_heads": {"box_predictor": {"cls_score": {"kernel": a(4, 3), "bias": a(3)}}},
    }


def make_stub_loss(traces: list | None = None, dtype=jnp.float32):
    """Sum of squares of every param x mean image, plus a key-dependent term."""

    def loss_fn(variables, batch, key):
        if traces is not None:
            traces.append(batch["image"].shape)
        sq = sum(jnp.sum(p.astype(dtype) ** 2) for p in jax.tree.leaves(variables["params"]))
        x = jnp.mean(batch["image"].astype(dtype)) / 255.0
        aux = {"num_things": jnp.float32(3.0), "all_finite": jnp.isfinite(batch["scale"])}
        return {"loss_a": sq * x * batch["scale"][0], "loss_b": 1e-3 * jax.random.uniform(key)}, aux

    return loss_fn


def batch(shape=(2, 32, 48), scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 255, (*shape, 3), dtype=np.uint8),
        "scale": np.full((shape[0],), scale, np.float32),
    }


class FakeLoader:
    """Deterministic batches (a pure function of the position) with get_state/set_state.

    `on_batch(position)` is called before each batch is returned (e.g. to send SIGTERM);
    `scales` maps positions to the batch's "scale" (NaN to poison a step).
    """

    def __init__(self, on_batch=None, scales=None):
        self.position, self.on_batch, self.scales = 0, on_batch, dict(scales or {})

    def __next__(self):
        p = self.position
        self.position += 1
        if self.on_batch is not None:
            self.on_batch(p)
        return batch(scale=self.scales.get(p, 1.0), seed=p)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


@pytest.fixture
def smoke_config():
    """The smoke config, unlocked so tests can change solver values."""
    config = load_config("configs/mask_rcnn_R_50_FPN_1x.py:smoke")
    config.unlock()
    return config
