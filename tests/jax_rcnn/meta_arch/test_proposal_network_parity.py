"""ProposalNetwork (RPN-only) against Detectron2 on the `tiny_rpn` fixture (float32, CPU).

The fixture is Detectron2's rpn_R_50_FPN_1x with tiny_maskrcnn's narrow widths and weights
(tests/data/tiny_rpn/README.md): the input photo, its annotations and the weights are
tiny_maskrcnn's, byte for byte, so they are read from tests/data/tiny_maskrcnn (the pickle is
filtered to `backbone.*` and `proposal_generator.*`, exactly the fixture's 287 tensors).
Tolerances: proposals same count, boxes within 0.01 px, logits within 1e-4; box-proposal AR
(Detectron2's x100 numbers) within 1e-4; losses within 1e-4 relative; gradients within 1e-3
relative L2 error per tensor (5e-3 for res3.0.conv1, whose float32 value is only determined to
that, see test_retinanet_parity.py).
"""

import copy
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jax_rcnn import modeling, postprocess
from jax_rcnn.checkpoint import detectron2 as d2
from jax_rcnn.config import from_detectron2
from jax_rcnn.evaluation import ProposalEvaluator
from jax_rcnn.evaluation.proposal_evaluation import evaluate_box_proposals, load_proposal_gt
from jax_rcnn.meta_arch import get, proposal_network
from tests.jax_rcnn.fixture_parity import npz_fixtures

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"
RPN = DATA / "tiny_rpn"
SHARED = DATA / "tiny_maskrcnn"  # same photo, annotations and weights


inference_npz, training_npz = npz_fixtures(RPN)


@pytest.fixture(scope="module")
def setup():
    config = from_detectron2(RPN / "config.yaml")
    state = d2.load_detectron2_pkl(SHARED / "model_final.pkl")
    state = {k: v for k, v in state.items() if k.startswith(("backbone.", "proposal_generator."))}
    assert len(state) == 287
    variables = d2.convert_detectron2_to_flax(state, config)
    return config, modeling.build_model(config), jax.device_put(variables)


def _padded_input(npz):
    h, w = (int(v) for v in npz["padded_size"])
    bgr = np.load(SHARED / "inference.npz")["input_bgr"]
    images = np.zeros((1, h, w, 3), np.uint8)
    images[0, : bgr.shape[0], : bgr.shape[1]] = bgr
    return jnp.asarray(images), jnp.asarray(npz["image_sizes"])


@pytest.fixture(scope="module")
def outputs(setup, inference_npz):
    config, model, variables = setup
    images, sizes = _padded_input(inference_npz)
    run = jax.jit(
        lambda v, im, sz, osz: proposal_network.inference(model, v, im, sz, osz, config=config)
    )
    original_sizes = jnp.asarray(inference_npz["original_sizes"])
    return jax.device_get(run(variables, images, sizes, original_sizes))


def test_config_from_the_fixture_yaml(setup):
    config = setup[0]
    assert config.model.meta_architecture == "ProposalNetwork"
    assert get(config) is proposal_network
    assert config.model.rpn.post_nms_topk_test == 2000
    assert "roi_heads" not in config.model
    assert isinstance(setup[1], modeling.ProposalNetwork)


@pytest.mark.parametrize(
    "ours, theirs, theirs_logits",
    [
        # find_top_rpn_proposals, resized-input frame
        ("resized_", "img0_proposal_boxes", "img0_proposal_objectness_logits"),
        # after detector_postprocess, original frame (the ProposalNetwork output)
        ("", "img0_final_proposal_boxes", "img0_final_objectness_logits"),
    ],
)
def test_proposals(outputs, inference_npz, ours, theirs, theirs_logits):
    valid = outputs[f"{ours}valid"][0]
    boxes = outputs[f"{ours}proposal_boxes"][0][valid]
    logits = outputs[f"{ours}objectness_logits"][0][valid]
    ref_boxes, ref_logits = inference_npz[theirs], inference_npz[theirs_logits]
    assert boxes.shape == ref_boxes.shape
    # Same proposals in the same order, up to the order of logits tied within float32 noise
    # (one such pair here, 3e-6 apart): match each reference row to a row of ours.
    dist = np.max(np.abs(ref_boxes[:, None] - boxes[None]), axis=-1)
    dist = np.maximum(dist, 100 * np.abs(ref_logits[:, None] - logits[None]))
    match = np.argmin(dist, axis=1)
    assert np.max(dist[np.arange(len(match)), match]) <= 0.01
    assert len(np.unique(match)) == len(match)
    moved = np.flatnonzero(match != np.arange(len(match)))
    assert len(moved) <= 4, moved
    np.testing.assert_allclose(logits[moved], ref_logits[moved], atol=1e-4)
    assert np.all(np.diff(logits) <= 0)  # sorted as Detectron2 sorts them


def test_predictor_fields(outputs, inference_npz):
    inst = postprocess.instances_for_image(outputs, 0, (375, 500))
    assert set(inst) == {"proposal_boxes", "objectness_logits"}
    assert inst["proposal_boxes"].shape == inference_npz["img0_final_proposal_boxes"].shape


def test_box_proposal_ar_internals_on_detectron2_proposals(inference_npz):
    """Our AR code on Detectron2's own proposals reproduces every recorded intermediate."""
    gt = load_proposal_gt(SHARED / "annotations.json")
    (image_id,) = gt
    props = {
        image_id: (
            inference_npz["img0_final_proposal_boxes"],
            inference_npz["img0_final_objectness_logits"],
        )
    }
    np.testing.assert_array_equal(
        evaluate_box_proposals(props, gt)["thresholds"], inference_npz["recall_thresholds"]
    )
    for limit in (100, 1000):
        for area in ("all", "small", "medium", "large"):
            got = evaluate_box_proposals(props, gt, area=area, limit=limit)
            key = f"{area}_{limit}"
            assert got["num_pos"] == int(inference_npz[f"num_pos_{key}"])
            np.testing.assert_array_equal(got["gt_overlaps"], inference_npz[f"gt_overlaps_{key}"])
            np.testing.assert_array_equal(got["recalls"], inference_npz[f"recalls_{key}"])
            assert got["ar"] == inference_npz[f"ar_{key}"], key  # same float32, last bit too


def test_box_proposal_ar_of_our_proposals(outputs):
    expected = json.loads((RPN / "summary.json").read_text())["box_proposals"]
    evaluator = ProposalEvaluator(SHARED / "annotations.json")
    evaluator.process(
        np.array([1]), outputs["proposal_boxes"], outputs["objectness_logits"], outputs["valid"]
    )
    got = evaluator.evaluate()["box_proposals"]
    assert got["num_images_evaluated"] == 1
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key


@pytest.fixture(scope="module")
def training(setup, training_npz, inference_npz):
    config, _, variables = setup
    config = copy.deepcopy(config)
    with config.unlocked():  # the fixture's override: every labelled anchor is used
        config.model.rpn.batch_size_per_image = 1_000_000
    model = modeling.build_model(config, train=True)
    images, _ = _padded_input(inference_npz)
    g = 24
    boxes = np.zeros((1, g, 4), np.float32)
    valid = np.zeros((1, g), bool)
    n = len(training_npz["img0_gt_boxes"])
    boxes[0, :n], valid[0, :n] = training_npz["img0_gt_boxes"], True
    batch = {
        "image": images,
        "image_size": jnp.asarray(training_npz["img0_image_size"][None]),
        "gt_boxes": jnp.asarray(boxes),
        "gt_valid": jnp.asarray(valid),
    }
    frozen = {k: v for k, v in variables.items() if k != "params"}

    def total(params):
        losses, aux = proposal_network.forward_train(
            model, {"params": params, **frozen}, batch, jax.random.key(0), config=config
        )
        return sum(losses.values()), (losses, aux)

    (_, (losses, aux)), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(
        variables["params"]
    )
    return jax.device_get((losses, aux, grads))


def test_training_losses_and_proposals(training, training_npz):
    losses, aux, _ = training
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    for name in ("loss_rpn_cls", "loss_rpn_loc"):
        assert float(losses[name]) == pytest.approx(float(training_npz[name]), rel=1e-4), name
    props = aux["proposals"]
    valid = props.valid[0]
    np.testing.assert_allclose(
        props.boxes[0][valid], training_npz["img0_train_proposal_boxes"], atol=0.01
    )
    assert bool(np.all(aux["all_finite"]))


def test_gradients(training, training_npz, setup):
    flat = {e.d2_name: e for e in d2.name_table(setup[0])}
    got = traverse_util.flatten_dict(training[2])
    errors = {}
    for key in training_npz.files:
        if key.startswith("grad/"):
            entry = flat[key[len("grad/") :]]
            ours = d2._to_d2(entry, np.asarray(got[entry.path]))
            ref = training_npz[key]
            errors[key] = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert len(errors) == 9
    tol = {"grad/backbone.bottom_up.res3.0.conv1.weight": 5e-3}
    bad = {k: float(v) for k, v in errors.items() if v > tol.get(k, 1e-3)}
    assert not bad, bad
