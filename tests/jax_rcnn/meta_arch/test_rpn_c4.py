"""`rpn_R_50_C4_1x`: the ProposalNetwork on the plain ResNet (RPN on res4, 15 anchors per
position), its config, and the smoke variant through a Detectron2-format checkpoint, the
Predictor (Detectron2's exact padding: size_divisibility 0) and the training losses."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_rcnn import config as cfg_lib
from jax_rcnn import modeling
from jax_rcnn.checkpoint.detectron2 import convert_flax_to_detectron2, describe_config
from jax_rcnn.meta_arch import proposal_network
from jax_rcnn.predictor import Predictor


def test_config_is_base_rcnn_c4_without_roi_heads():
    config = cfg_lib.load_config("configs/rpn_R_50_C4_1x.py")
    m = config.model
    assert m.meta_architecture == "ProposalNetwork" and cfg_lib.layout(config) == "C4"
    assert m.backbone.name == "build_resnet_backbone" and "fpn" not in m
    assert m.resnets.out_features == m.rpn.in_features == ("res4",)
    assert m.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    topk = (m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train)
    assert topk + (m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test) == (12000, 2000, 12000, 2000)
    assert not {"roi_heads", "roi_box_head", "roi_mask_head"} & set(m)
    assert config.input.size_divisibility == 0
    assert describe_config(config).startswith("ProposalNetwork (RPN only, no roi_heads.*) R50-C4 (")


def test_rpn_on_res4_has_15_anchors_on_the_ceil_16_grid():
    """No padding multiple: 120 x 150 -> res4 8 x 10 (each stride-2 op takes the ceiling)."""
    config = cfg_lib.load_config("configs/rpn_R_50_C4_1x.py:smoke")
    model = modeling.build_model(config)
    assert isinstance(model, modeling.ProposalNetwork)

    def run():
        out, _ = model.init_with_output(jax.random.key(0), jnp.zeros((1, 120, 150, 3)))
        return out

    out = jax.eval_shape(run)
    assert set(out["features"]) == {"res4"}
    assert out["features"]["res4"].shape == (1, 8, 10, 128)
    assert [x.shape for x in out["rpn_logits"]] == [(1, 8 * 10 * 15)]
    assert [x.shape for x in out["rpn_deltas"]] == [(1, 8 * 10 * 15, 4)]


@pytest.mark.slow  # three compiles of the smoke model: 87 s on the loaded 2-core dev CPU
def test_smoke_model_through_a_checkpoint_predictor_and_training(tmp_path):
    """A Detectron2-format `.pkl` of the smoke model, the Predictor on two photos of different
    sizes in Detectron2's exact mode (size_divisibility 0: not padded), and the RPN losses of a
    batch of two image sizes."""
    config = cfg_lib.load_config("configs/rpn_R_50_C4_1x.py:smoke")
    with config.unlocked():
        config.input.pad_mode = "size_divisibility"  # size_divisibility 0: Detectron2's C4
        config.input.buckets = common.input_config().buckets  # unused in this mode
    variables = modeling.init_variables(modeling.build_model(config), jax.random.key(0))
    state = convert_flax_to_detectron2(variables, config)
    assert "proposal_generator.rpn_head.objectness_logits.weight" in state
    assert state["proposal_generator.rpn_head.anchor_deltas.weight"].shape == (60, 128, 1, 1)
    assert not any(k.startswith(("roi_heads.", "backbone.bottom_up.")) for k in state)
    weights = tmp_path / "rpn_c4.pkl"
    with open(weights, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)

    predictor = Predictor(config, weights=weights)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, s, np.uint8) for s in ((90, 117, 3), (101, 77, 3))]
    outs = predictor.batch(photos)
    for photo, out in zip(photos, outs, strict=True):
        assert set(out) == {"proposal_boxes", "objectness_logits"}
        n = len(out["objectness_logits"])
        assert 0 < n <= config.model.rpn.post_nms_topk_test
        assert out["proposal_boxes"].shape == (n, 4)
        assert np.all(np.diff(out["objectness_logits"]) <= 0)
        h, w = photo.shape[:2]
        boxes = out["proposal_boxes"]
        assert np.all(boxes >= 0) and np.all(boxes[:, 2:] <= [w, h])
        assert np.all(boxes[:, 2:] > boxes[:, :2])  # empty boxes dropped
    # Each photo resized (123 x 160, 160 x 122) and padded to nothing: one program per shape.
    assert predictor.num_traces == 2

    train_model = modeling.build_model(config, train=True)
    g = 4
    batch = dict(
        image=jnp.asarray(rng.integers(0, 256, (2, 128, 160, 3), np.uint8)),
        image_size=jnp.array([[128, 160], [120, 97]], jnp.int32),
        gt_boxes=jnp.tile(jnp.array([[10.0, 12, 60, 70], [30, 20, 90, 95]]), (2, 2, 1)),
        gt_valid=jnp.array([[True, True, False, False], [True, False, False, False]]),
    )
    assert batch["gt_boxes"].shape == (2, g, 4)
    losses, aux = jax.jit(
        lambda v, b: proposal_network.forward_train(
            train_model, v, b, jax.random.key(1), config=config
        )
    )(variables, batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert aux["rpn_labels"].shape == (2, 8 * 10 * 15)
    assert np.sum(np.asarray(aux["rpn_labels"]) == 1) > 0
