"""The full-size `mask_rcnn_R_50_FPN_1x` config: build, load a full-size Detectron2-format
checkpoint, run on an 800x1333 image on CPU."""

import pickle

import jax
import numpy as np
import pytest

from jax_rcnn import modeling
from jax_rcnn.checkpoint.detectron2 import convert_flax_to_detectron2
from jax_rcnn.config import load_config
from jax_rcnn.predictor import Predictor


@pytest.mark.slow
def test_full_size_mask_rcnn_runs_from_a_detectron2_checkpoint(tmp_path):
    cfg = load_config("configs/mask_rcnn_R_50_FPN_1x.py")
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: rng.normal(0.0, 0.01, s.shape).astype(s.dtype),
        modeling.abstract_variables(cfg),
    )
    state_dict = convert_flax_to_detectron2(variables, cfg)
    assert len(state_dict) > 300  # every Detectron2 name, full-size shapes
    assert state_dict["backbone.bottom_up.res5.2.conv3.weight"].shape == (2048, 512, 1, 1)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state_dict, "__author__": "test"}, f)

    predictor = Predictor(cfg, weights=path)
    image = rng.integers(0, 256, (800, 1333, 3), np.uint8)
    out = predictor(image)
    n = len(out["scores"])
    assert out["boxes"].shape == (n, 4) and out["classes"].shape == (n,)
    assert out["masks"].shape == (n, 800, 1333)
    assert np.all(np.isfinite(out["boxes"]))
    assert predictor.num_traces == 1


@pytest.mark.slow
def test_full_size_rpn_runs_from_a_detectron2_checkpoint(tmp_path):
    cfg = load_config("configs/rpn_R_50_FPN_1x.py")
    rng = np.random.default_rng(0)
    # Positive FrozenBN variances, so that the features (and proposals) are finite.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: (
            1.0 + np.abs(rng.normal(0.0, 0.01, s.shape))
            if "running_var" in jax.tree_util.keystr(path)
            else rng.normal(0.0, 0.01, s.shape)
        ).astype(s.dtype),
        modeling.abstract_variables(cfg),
    )
    state_dict = convert_flax_to_detectron2(variables, cfg)
    assert not any(k.startswith("roi_heads.") for k in state_dict)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state_dict, "__author__": "test"}, f)

    predictor = Predictor(cfg, weights=path)
    out = predictor(rng.integers(0, 256, (600, 1000, 3), np.uint8))
    assert set(out) == {"proposal_boxes", "objectness_logits"}
    n = len(out["objectness_logits"])
    assert 0 < n <= 2000 and out["proposal_boxes"].shape == (n, 4)
    assert np.all(np.diff(out["objectness_logits"]) <= 0)
    assert np.all(out["proposal_boxes"][:, 2:] <= [1000, 600])
    assert predictor.num_traces == 1
