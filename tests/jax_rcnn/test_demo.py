"""`python -m jax_rcnn.demo` on a smoke model saved as a Detectron2 checkpoint."""

import pickle

import jax
import numpy as np
import pytest
from PIL import Image

from jax_rcnn import demo, modeling
from jax_rcnn.checkpoint.detectron2 import convert_flax_to_detectron2
from jax_rcnn.config import load_config

SMOKE = "configs/mask_rcnn_R_50_FPN_1x.py:smoke"


@pytest.mark.parametrize(
    "spec",
    [
        SMOKE,
        "configs/rpn_R_50_FPN_1x.py:smoke",
        # ~35 s of CPU: a second R-CNN compile plus the semantic head
        pytest.param("configs/panoptic_fpn_R_50_1x.py:smoke", marks=pytest.mark.slow),
    ],
)
def test_demo_draws_a_picture(tmp_path, capsys, spec):
    cfg = load_config(spec)
    variables = modeling.init_variables(modeling.build_model(cfg), jax.random.key(0))
    weights = tmp_path / "smoke.pkl"
    with open(weights, "wb") as f:
        pickle.dump({"model": convert_flax_to_detectron2(variables, cfg)}, f)
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), np.uint8)).save(photo)
    out = tmp_path / "out" / "pred.png"
    args = ["--config", spec, "--weights", str(weights), "--input", str(photo), str(photo)]
    assert demo.main([*args, "--output", str(out), "--score-thresh", "0.0"]) == 0
    picture = Image.open(out)
    assert picture.size[0] > 120 and picture.mode == "RGB"  # two photos tiled
    printed = capsys.readouterr().out
    assert "detections" in printed
    assert ("segments" in printed) == ("panoptic" in spec)


def test_class_names():
    cfg = load_config(SMOKE)
    assert demo.class_names_for(cfg, "a, b ,c") == ("a", "b", "c")
    assert demo.class_names_for(cfg, None) == ()
