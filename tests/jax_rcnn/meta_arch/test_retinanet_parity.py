"""RetinaNet against Detectron2 on the `tiny_retinanet` fixture (float32, CPU), stage by stage.

The fixture is Detectron2's retinanet_R_50_FPN_1x with narrow widths and 4 classes, trained on
one photo (tests/data/tiny_retinanet/README.md). The config comes from the fixture's own
`cfg.dump()` through `from_detectron2`, the weights from its model-zoo pickle.
Tolerances: features, logits and deltas within 1e-4 of the reference's largest magnitude;
detections same count and classes, boxes within 0.05 px, scores within 1e-4; losses within
1e-4 relative; gradients within 1e-3 relative L2 error `|ours - ref| / |ref|` per tensor (the
measure of the Mask R-CNN gradient test).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_rcnn import anchors as anchor_ops
from jax_rcnn import modeling
from jax_rcnn.checkpoint import detectron2 as d2
from jax_rcnn.meta_arch import common, dense_head, retinanet
from tests.jax_rcnn.fixture_parity import (
    DETECTION_CASES,
    assert_close,
    assert_detections,
    padded_input,
    parity_fixtures,
)

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_retinanet"
LEVELS = ("p3", "p4", "p5", "p6", "p7")


inference_npz, training_npz, setup = parity_fixtures(DATA, reference_kernels=False)


@pytest.fixture(scope="module")
def head_outputs(setup, inference_npz):
    config, model, variables = setup
    images, sizes = padded_input(inference_npz)

    @jax.jit
    def run(variables, images, sizes):
        nets = common.Networks(model, variables)
        feats = common.backbone_features(config, nets, images, sizes)
        return feats, dense_head.dense_head(config, nets, feats)

    return jax.device_get(run(variables, images, sizes))


def test_config_from_the_fixture_yaml(setup):
    config = setup[0]
    assert config.model.meta_architecture == "RetinaNet"
    assert config.model.backbone.name == "build_retinanet_resnet_fpn_backbone"
    assert config.model.retinanet.num_classes == 4
    assert config.model.retinanet.smooth_l1_loss_beta == 0.0
    assert config.input.size_divisibility == 32


@pytest.mark.parametrize("level", LEVELS)
def test_pyramid_levels(head_outputs, inference_npz, level):
    feats = head_outputs[0]
    assert_close(feats[level].transpose(0, 3, 1, 2), inference_npz[level])


@pytest.mark.parametrize("i,level", list(enumerate(LEVELS)))
def test_head_logits_and_deltas(head_outputs, inference_npz, i, level):
    out = head_outputs[1]
    assert_close(out.cls_logits[i], inference_npz[f"cls_logits_{level}"])
    assert_close(out.box_deltas[i], inference_npz[f"box_deltas_{level}"])


@pytest.mark.parametrize("i,level", list(enumerate(LEVELS)))
def test_anchors(head_outputs, inference_npz, i, level, setup):
    ag = setup[0].model.anchor_generator
    np.testing.assert_array_equal(
        anchor_ops.cell_anchors(ag.sizes[i], ag.aspect_ratios[0]),
        inference_npz[f"cell_anchors_{level}"],
    )
    if f"anchors_{level}" in inference_npz:
        np.testing.assert_array_equal(head_outputs[1].anchors[i], inference_npz[f"anchors_{level}"])


@pytest.fixture(scope="module")
def detections(setup, inference_npz):
    config, model, variables = setup
    images, sizes = padded_input(inference_npz)
    originals = jnp.asarray(inference_npz["original_sizes"])
    run = jax.jit(lambda v, x, s, o: retinanet.inference(model, v, x, s, o, config=config))
    return jax.device_get(run(variables, images, sizes, originals))


@pytest.mark.parametrize(**DETECTION_CASES)
def test_detections(detections, inference_npz, ours, theirs):
    """Resized-frame detections (`det_*`) and `detector_postprocess` output (`final_*`)."""
    assert_detections(detections, inference_npz, ours, theirs)


def _training_batch(npz, inference):
    images, _ = padded_input(inference)
    g = 24  # padded gt slots
    boxes = np.zeros((1, g, 4), np.float32)
    classes = np.zeros((1, g), np.int32)
    valid = np.zeros((1, g), bool)
    n = len(npz["img0_gt_boxes"])
    boxes[0, :n], classes[0, :n], valid[0, :n] = npz["img0_gt_boxes"], npz["img0_gt_classes"], True
    return {
        "image": images,
        "image_size": jnp.asarray(npz["img0_image_size"][None]),
        "gt_boxes": jnp.asarray(boxes),
        "gt_classes": jnp.asarray(classes),
        "gt_valid": jnp.asarray(valid),
    }


@pytest.fixture(scope="module")
def training(setup, training_npz, inference_npz):
    config, _, variables = setup
    model = modeling.build_model(config, train=True)
    batch = _training_batch(training_npz, inference_npz)
    frozen = {k: v for k, v in variables.items() if k != "params"}

    def total(params):
        losses, aux = retinanet.forward_train(
            model, {"params": params, **frozen}, batch, jax.random.key(0), config=config
        )
        return sum(losses.values()), (losses, aux)

    grad_fn = jax.jit(jax.value_and_grad(total, has_aux=True))
    (_, (losses, aux)), grads = grad_fn(variables["params"])
    return jax.device_get((losses, aux, grads))


def test_anchor_labels(training, training_npz):
    labels = training[1]["gt_labels"][0]
    np.testing.assert_array_equal(labels, training_npz["img0_anchor_labels"].astype(np.int32))


def test_loss_normalizer_and_losses(training, training_npz):
    losses, aux, _ = training
    assert float(aux["loss_normalizer"]) == pytest.approx(float(training_npz["loss_normalizer"]))
    for name in ("loss_cls", "loss_box_reg"):
        assert float(losses[name]) == pytest.approx(float(training_npz[name]), rel=1e-4), name


# Relative L2 error allowed per gradient (default 1e-3). The exception is float32 noise, not
# semantics: our own float64 gradient of res3.0.conv1 differs from our float32 one by 4.4e-3
# (and from Detectron2's float32 reference by 4.5e-3), so the float32 value of that tensor is
# only determined to ~5e-3; every other tensor agrees to <= 6e-4 (heads <= 1e-4).
GRAD_RTOL = {"grad/backbone.bottom_up.res3.0.conv1.weight": 5e-3}


def test_gradients(training, training_npz, setup):
    config = setup[0]
    grads = {"params": training[2]}
    flat = {e.d2_name: e for e in d2.name_table(config)}
    got = traverse_util.flatten_dict(grads["params"])
    errors = {}
    for key in training_npz.files:
        if not key.startswith("grad/"):
            continue
        entry = flat[key[len("grad/") :]]
        ours, ref = d2._to_d2(entry, np.asarray(got[entry.path])), training_npz[key]
        errors[key] = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert len(errors) == 14
    bad = {k: float(v) for k, v in errors.items() if v > GRAD_RTOL.get(k, 1e-3)}
    assert not bad, bad


def test_loss_state_is_an_ema_of_the_foreground_count(setup, training_npz, inference_npz):
    """The next step starts from the normaliser this step used (Detectron2's EMA)."""
    config, _, variables = setup
    model = modeling.build_model(config, train=True)
    batch = _training_batch(training_npz, inference_npz)
    state = {"loss_normalizer": jnp.asarray(50.0)}
    _, aux = jax.jit(
        lambda v: retinanet.forward_train(model, v, batch, jax.random.key(0), config=config)
    )({**variables, "loss_state": state})
    num_pos = int(training_npz["num_pos_anchors"])
    assert float(aux["updates"]["loss_state"]["loss_normalizer"]) == pytest.approx(
        0.9 * 50 + 0.1 * num_pos
    )
