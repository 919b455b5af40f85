"""C4 and DC5 beyond the fixture: the dilated res5, C4's unpadded grid, the smoke configs through
the train and test stages, and the Predictor / export / train.py paths on C4."""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jax_rcnn import export, modeling
from jax_rcnn.config import from_detectron2, load_config
from jax_rcnn.data.transforms import read_image
from jax_rcnn.meta_arch import rcnn
from jax_rcnn.modeling.layers import Conv2d
from jax_rcnn.modeling.resnet import ResNet
from jax_rcnn.predictor import Predictor

ROOT = pathlib.Path(__file__).resolve().parents[3]
C4 = ROOT / "tests" / "data" / "tiny_c4_maskrcnn"


def test_dilated_conv_matches_a_zero_inserted_kernel():
    """Detectron2's DC5 3x3 conv: dilation 2, padding 2 (`padding = 1 * dilation`). Reference:
    the same weights spread into a 5x5 kernel with zeros between taps, padding 2."""
    x = jax.random.normal(jax.random.key(0), (1, 9, 11, 4))
    conv = Conv2d(6, 3, padding=2, dilation=2, use_bias=False)
    variables = conv.init(jax.random.key(1), x)
    got = conv.apply(variables, x)
    k3 = variables["params"]["kernel"]
    k5 = jnp.zeros((5, 5, 4, 6)).at[::2, ::2].set(k3)
    want = lax.conv_general_dilated(
        x, k5, (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert got.shape == x.shape[:3] + (6,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dc5_res5_keeps_stride_16_and_c4_grid_is_ceil_of_16():
    """DC5: res5 has res4's H x W (first block stride 1). Any input size: each stride-2 op
    gives ceil(H / 2), so 601 x 803 -> 38 x 51 at stride 16 (no padding to 32)."""
    x = jnp.zeros((1, 601, 803, 3))
    net = ResNet(
        stem_out_channels=8,
        res2_out_channels=16,
        width_per_group=4,
        res5_dilation=2,
        out_features=("res4", "res5"),
    )
    shapes = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), x)[0])
    assert shapes["res4"].shape == (1, 38, 51, 64)
    assert shapes["res5"].shape == (1, 38, 51, 128)


@pytest.mark.slow  # ~35 s each: two compiles of a whole model
@pytest.mark.parametrize(
    "name, mask_side", [("mask_rcnn_R_50_C4_1x", 14), ("mask_rcnn_R_50_DC5_1x", 28)]
)
def test_smoke_config_trains_and_infers(name, mask_side):
    """Both paths of the meta-architecture on the tiny variant, on an image with no padding
    multiple (C4 and DC5 need none)."""
    config = load_config(f"configs/{name}.py:smoke")
    model = modeling.build_model(config)
    variables = modeling.init_variables(model, jax.random.key(0))
    images = jax.random.randint(jax.random.key(1), (2, 120, 150, 3), 0, 255).astype(jnp.uint8)
    sizes = jnp.array([[120, 150], [100, 131]], jnp.int32)
    out = jax.jit(lambda v, x, s: rcnn.inference(model, v, x, s, s, config=config))(
        variables, images, sizes
    )
    d = config.test.detections_per_image
    assert out["boxes"].shape == (2, d, 4)
    assert out["mask_probs"].shape == (2, d, mask_side, mask_side)
    g = 4
    batch = dict(
        image=images,
        image_size=sizes,
        gt_boxes=jnp.tile(jnp.array([[10.0, 12, 60, 70], [30, 20, 90, 95]]), (2, 2, 1)),
        gt_classes=jnp.zeros((2, g), jnp.int32),
        gt_valid=jnp.array([[True, True, False, False]] * 2),
        gt_masks=jnp.ones((2, g, 32, 32), jnp.uint8) * 255,
    )
    train_model = modeling.build_model(config, train=True)
    losses, aux = jax.jit(
        lambda v, b: rcnn.forward_train(train_model, v, b, jax.random.key(2), config=config)
    )(variables, batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert aux["mask_targets"].shape[-2:] == (mask_side, mask_side)


@pytest.mark.slow  # ~25 s; the stages are checked by test_c4_parity
def test_predictor_on_the_c4_fixture_matches_detectron2():
    """Read, resize (600 x 800, not padded: size_divisibility 0), model, postprocess, paste."""
    predictor = Predictor(from_detectron2(C4 / "config.yaml"), weights=C4 / "model_final.pkl")
    want = np.load(C4 / "inference.npz")
    out = predictor(read_image(C4 / "image.jpg", "BGR"))
    assert len(out["scores"]) == len(want["img0_final_scores"])
    np.testing.assert_allclose(out["boxes"], want["img0_final_boxes"], atol=0.05)
    np.testing.assert_allclose(out["scores"], want["img0_final_scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["classes"], want["img0_final_classes"])
    inter = (out["masks"] & want["img0_final_masks"]).sum((1, 2))
    union = (out["masks"] | want["img0_final_masks"]).sum((1, 2))
    assert np.where(union == 0, 1.0, inter / np.maximum(union, 1)).min() >= 0.99


@pytest.mark.slow
def test_c4_export_artifact_and_detectron2_round_trip(tmp_path):
    """`jax_rcnn.export` on C4: the `.pkl` export is the fixture's checkpoint bit for bit, the
    `jax.export` artifact at 600x800 reproduces Detectron2's detections."""
    args = ["--config", str(C4 / "config.yaml"), "--weights", str(C4 / "model_final.pkl")]
    assert export.main([*args, "--out", str(tmp_path / "d2"), "--format", "detectron2"]) == 0
    with open(tmp_path / "d2" / export.D2_CHECKPOINT, "rb") as f:
        got = pickle.load(f)["model"]
    with open(C4 / "model_final.pkl", "rb") as f:
        ref = pickle.load(f)["model"]
    assert sorted(got) == sorted(ref)
    assert all(np.asarray(got[k]).tobytes() == np.asarray(v).tobytes() for k, v in ref.items())
    assert export.main([*args, "--out", str(tmp_path / "jax"), "--shapes", "600x800"]) == 0
    out = export.load(tmp_path / "jax")(read_image(C4 / "image.jpg", "BGR"))
    want = np.load(C4 / "inference.npz")
    assert len(out["scores"]) == len(want["img0_final_scores"])
    np.testing.assert_allclose(out["boxes"], want["img0_final_boxes"], atol=0.05)
    np.testing.assert_array_equal(out["classes"], want["img0_final_classes"])


@pytest.mark.slow
def test_train_py_two_steps_on_c4(tmp_path):
    """`train.py` on `configs/mask_rcnn_R_50_C4_1x.py:smoke`: two steps and an evaluation."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/mask_rcnn_R_50_C4_1x.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.shapes.num_train=8",
        "--config.data.shapes.num_val=4",
        "--config.solver.base_lr=0.0001",
        "--config.solver.max_iter=2",
        "--config.solver.steps=(1,)",
        "--config.test.eval_period=2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(tmp_path / "w", "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert "loss_mask" in metrics[1]
    assert {"bbox/AP", "segm/AP"} <= set(metrics[-1])
