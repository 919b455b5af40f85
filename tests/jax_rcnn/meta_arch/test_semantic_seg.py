"""`SemanticSegmentor` (FPN + `SemSegFPNHead`, no instances): the model-zoo YAML, the smoke
model's loss and inference, the host-side post-processing; and the bilinear resize it uses."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_rcnn import modeling, panoptic, semantic
from jax_rcnn.config import from_detectron2, validate
from jax_rcnn.meta_arch import semantic_seg

ZOO = pathlib.Path(__file__).resolve().parents[2] / "data" / "detectron2_configs"


def test_semantic_zoo_yaml():
    config = from_detectron2(ZOO / "Misc" / "semantic_R_50_FPN_1x.yaml")
    m = config.model
    assert m.meta_architecture == "SemanticSegmentor"
    assert m.sem_seg_head.num_classes == 54 and m.sem_seg_head.loss_weight == 1.0
    assert "rpn" not in m and "roi_heads" not in m
    assert config.input.min_size_train == (640, 672, 704, 736, 768, 800)


def test_resize_bilinear_worked_example():
    """PyTorch's align_corners=False: x2 of [0, 4] is [0, 1, 3, 4] (edges clamped); 4 -> 3
    samples at source 1/6, 3/2, 17/6."""
    x = np.array([0.0, 4.0], np.float32).reshape(1, 2, 1)
    np.testing.assert_allclose(semantic.upsample_bilinear(x, 2)[0, :, 0], [0, 1, 3, 4])
    y = np.array([0.0, 3.0, 6.0, 9.0], np.float32).reshape(4, 1, 1)
    np.testing.assert_allclose(
        semantic.resize_bilinear(y, 3, 1)[:, 0, 0], [0.5, 4.5, 8.5], rtol=1e-6
    )
    jx = semantic.upsample_bilinear(jnp.asarray(x), 2)
    np.testing.assert_allclose(np.asarray(jx)[0, :, 0], [0, 1, 3, 4])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_upsample_phases_equal_the_gather_form(factor, monkeypatch):
    """The JAX path (shifted slices per output phase) gives the same bits as PyTorch's tap
    formula (`resize_bilinear`, gathers) and the same gradient, without falling back to it."""
    rng = np.random.default_rng(factor)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    h, w = x.shape[1:3]

    def gathers(x):
        return semantic.resize_bilinear(x, factor * h, factor * w, scale=(1 / factor,) * 2)

    want = gathers(x)
    dy = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    want_grad = jax.vjp(gathers, jnp.asarray(x))[1](dy)[0]
    monkeypatch.setattr(semantic, "_resize_axis", None)  # no fallback to the gathers
    got = semantic.upsample_bilinear(jnp.asarray(x), factor)
    np.testing.assert_array_equal(np.asarray(got), want)
    got_grad = jax.vjp(lambda x: semantic.upsample_bilinear(x, factor), jnp.asarray(x))[1](dy)[0]
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_sem_seg_loss_ignores_255_and_weights():
    logits = jnp.zeros((1, 2, 2, 3)).at[0, 0, 0, 1].set(2.0)
    targets = jnp.full((1, 8, 8), 255, jnp.int32).at[0, 0, 0].set(1).at[0, 7, 7].set(0)
    loss = semantic.sem_seg_loss(logits, targets, common_stride=4, loss_weight=0.5)
    # pixel (0, 0) sees logits (0, 2, 0): CE -log(e^2 / (2 + e^2)); pixel (7, 7): -log(1/3)
    ce = [-np.log(np.exp(2) / (2 + np.exp(2))), np.log(3)]
    assert float(loss) == pytest.approx(0.5 * np.mean(ce), rel=1e-6)


@pytest.fixture(scope="module")
def smoke():
    config = common.base_config(meta_architecture="SemanticSegmentor")
    common.smoke(config)
    config.lock()
    validate(config)
    model = modeling.build_model(config)
    variables = modeling.init_variables(model, jax.random.key(0))
    return config, model, variables


@pytest.mark.slow  # two compiles of a smoke model (~30 s on 2 loaded cores)
def test_smoke_loss_and_postprocessed_outputs(smoke):
    config, model, variables = smoke
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 128, 160, 3)), jnp.uint8)
    sizes = jnp.array([[128, 150], [100, 160]], jnp.int32)
    targets = np.full((2, 128, 160), 255, np.uint8)
    targets[:, :64] = 1
    batch = {"image": images, "image_size": sizes, "sem_seg": jnp.asarray(targets)}
    train_model = modeling.build_model(config, train=True)
    losses, _ = jax.jit(
        lambda v, b: semantic_seg.forward_train(train_model, v, b, None, config=config)
    )(variables, batch)
    assert set(losses) == {"loss_sem_seg"} and np.isfinite(losses["loss_sem_seg"])
    out = jax.device_get(
        jax.jit(lambda v, x, s: semantic_seg.inference(model, v, x, s, s, config=config))(
            variables, images, sizes
        )
    )
    assert out["sem_seg_logits"].shape == (2, 32, 40, config.model.sem_seg_head.num_classes)
    result = panoptic.panoptic_for_image(out, 1, (100, 160), (50, 80), config)
    assert result["sem_seg"].shape == (config.model.sem_seg_head.num_classes, 50, 80)
    np.testing.assert_array_equal(result["sem_seg_labels"], result["sem_seg"].argmax(0))
    assert "panoptic_seg" not in result


def test_semantic_config_file_equals_the_zoo_yaml():
    from jax_rcnn.config import load_config, to_flat_dict

    ours = to_flat_dict(load_config("configs/semantic_R_50_FPN_1x.py"))
    d2 = to_flat_dict(from_detectron2(ZOO / "Misc" / "semantic_R_50_FPN_1x.yaml"))
    assert set(ours) == set(d2)
    diff = {k for k in ours if ours[k] != d2[k]}
    assert diff == {
        "input.pad_mode",
        "input.auto_buckets",
        "data.train.name",
        "data.test.name",
        "input.mask_format",
        "model.weights",
    }
