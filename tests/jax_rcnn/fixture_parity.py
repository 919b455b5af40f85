"""Helpers shared by the parity tests against Detectron2's small fixtures (`tests/data/tiny_*`):
the module fixtures every parity module defines (`parity_fixtures`), loading a fixture's config
and weights, the relative tolerance measure, and the detection check every detector's parity
test makes (same count and classes, boxes within 0.05 px, scores 1e-4)."""

import pathlib

import jax
import numpy as np
import pytest

from jax_rcnn import modeling
from jax_rcnn.checkpoint import detectron2 as d2
from jax_rcnn.config import from_detectron2

RTOL = 1e-4

# (our valid/boxes keys, the fixture's key prefix): resized-frame detections before
# `detector_postprocess`, then the final ones in the original frame.
DETECTION_CASES = {
    "argnames": "ours, theirs",
    "argvalues": [(("det_valid", "det_boxes"), "img0_det"), (("valid", "boxes"), "img0_final")],
    "ids": ["before_postprocess", "final"],
}


def assert_close(actual, expected, rtol=RTOL):
    """`actual` equals `expected` within `rtol` of the reference's largest magnitude."""
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=rtol * scale)


def load_fixture(data: pathlib.Path, *, reference_kernels: bool = True):
    """`(config, model, variables)` of a fixture folder: its `cfg.dump()` (`config.yaml`) through
    `from_detectron2` and its `model_final.pkl`; the pure-JAX kernels unless told otherwise."""
    config = from_detectron2(data / "config.yaml")
    if reference_kernels:
        with config.unlocked():
            config.model.kernels = "reference"
    variables = d2.load_weights(data / "model_final.pkl", config, None)
    return config, modeling.build_model(config), jax.device_put(variables)


def npz_fixtures(data: pathlib.Path):
    """Module-scoped pytest fixtures `(inference_npz, training_npz)`: the fixture folder's
    `inference.npz` and `training.npz`. Bind them to those names in the test module (pytest
    finds fixtures by name)::

        inference_npz, training_npz = npz_fixtures(DATA)
    """

    @pytest.fixture(scope="module")
    def inference_npz():
        return np.load(data / "inference.npz")

    @pytest.fixture(scope="module")
    def training_npz():
        return np.load(data / "training.npz")

    return inference_npz, training_npz


def parity_fixtures(data: pathlib.Path, *, reference_kernels: bool = True):
    """`npz_fixtures(data)` plus a module-scoped `setup` fixture, `load_fixture(data,
    reference_kernels=...)`::

        inference_npz, training_npz, setup = parity_fixtures(DATA)
    """

    @pytest.fixture(scope="module")
    def setup():
        return load_fixture(data, reference_kernels=reference_kernels)

    return *npz_fixtures(data), setup


def sample_everything(setup, batch):
    """`(config, training model, variables, batch)` for a training-parity test: the fixture's
    config with the RPN's and ROI heads' `batch_size_per_image` at 1e6, so every anchor and
    proposal is sampled and the losses do not depend on the random subsampling."""
    config, _, variables = setup
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.rpn.batch_size_per_image = 1_000_000
        config.model.roi_heads.batch_size_per_image = 1_000_000
    return config, modeling.build_model(config, train=True), variables, batch


def assert_detections(detections, npz, ours, theirs):
    """Image 0's valid detections equal the fixture's `{theirs}_boxes/_scores/_classes`."""
    valid = detections[ours[0]][0]
    want = npz[f"{theirs}_boxes"]
    assert valid.sum() == len(want)
    np.testing.assert_allclose(detections[ours[1]][0][valid], want, atol=0.05)
    np.testing.assert_allclose(detections["scores"][0][valid], npz[f"{theirs}_scores"], atol=1e-4)
    np.testing.assert_array_equal(detections["classes"][0][valid], npz[f"{theirs}_classes"])


def padded_input(npz):
    """The fixture's `input_bgr` zero-padded to its `padded_size`: `(u8[1, H, W, 3] BGR,
    i32[1, 2] image_sizes)`, as Detectron2's `ImageList` saw it."""
    import jax.numpy as jnp

    h, w = (int(v) for v in npz["padded_size"])
    bgr = np.zeros((1, h, w, 3), np.uint8)
    ih, iw = npz["input_bgr"].shape[:2]
    bgr[0, :ih, :iw] = npz["input_bgr"]
    return jnp.asarray(bgr), jnp.asarray(npz["image_sizes"])


def gradient_errors(forward_train, train_setup, training_npz, zero_grads=None):
    """Relative L2 error `|ours - ref| / |ref|` of every `grad/<detectron2 name>` of the fixture.

    Args:
        forward_train: the meta-architecture's `forward_train(model, variables, batch, key,
            config=...) -> (losses, aux)`; the gradient is of the sum of the losses.
        train_setup: `(config, model, variables, batch)`.
        training_npz: the fixture's `training.npz`.
        zero_grads: `{key: bound}` for gradients that are exactly 0 in real arithmetic: the
            reference's norm must be under the bound, and ours is reported as its norm.

    Returns:
        `{grad key: error}` (printed for the record).
    """
    config, model, variables, batch = train_setup
    frozen = {k: v for k, v in variables.items() if k != "params"}

    def total(params):
        losses, _ = forward_train(
            model, {"params": params, **frozen}, batch, jax.random.key(0), config=config
        )
        return sum(losses.values())

    grads = jax.device_get(jax.jit(jax.grad(total))(variables["params"]))
    ours = d2.convert_flax_to_detectron2({**frozen, "params": grads}, config)
    zero_grads = zero_grads or {}
    errors = {}
    for key in training_npz.files:
        if key.startswith("grad/"):
            ref = training_npz[key]
            if key in zero_grads:
                assert np.linalg.norm(ref) < zero_grads[key], key
                errors[key] = float(np.linalg.norm(ours[key[5:]]))
            else:
                errors[key] = float(np.linalg.norm(ours[key[5:]] - ref) / np.linalg.norm(ref))
    print({k: f"{v:.2e}" for k, v in errors.items()})
    return errors
