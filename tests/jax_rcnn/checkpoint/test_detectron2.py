"""Detectron2 checkpoint conversion: name table vs the model zoo, round trips, bad inputs."""

import json
import pathlib
import pickle
import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import (
    cascade_mask_rcnn_R_50_FPN_1x,
    cascade_mask_rcnn_R_50_FPN_3x,
    faster_rcnn_R_50_C4_1x,
    faster_rcnn_R_50_DC5_1x,
    faster_rcnn_R_50_FPN_1x,
    keypoint_rcnn_R_50_FPN_1x,
    lvis_v0_5_mask_rcnn_R_50_FPN_1x,
    mask_rcnn_R_50_C4_1x,
    mask_rcnn_R_50_DC5_1x,
    mask_rcnn_R_50_FPN_1x,
    mask_rcnn_R_50_FPN_3x,
    panoptic_fpn_R_50_1x,
    retinanet_R_50_FPN_1x,
    rpn_R_50_C4_1x,
    rpn_R_50_FPN_1x,
)
from jax_rcnn import modeling
from jax_rcnn.checkpoint import detectron2 as d2
from tests.jax_rcnn.conftest import TINY_MASKRCNN, tiny_maskrcnn_config

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"
TINY_PKL = TINY_MASKRCNN / "model_final.pkl"


def r101_config():
    config = mask_rcnn_R_50_FPN_3x.get_config()
    config.model.resnets.depth = 101
    return config


ZOO = {
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": faster_rcnn_R_50_FPN_1x.get_config,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": mask_rcnn_R_50_FPN_1x.get_config,
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml": r101_config,
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml": retinanet_R_50_FPN_1x.get_config,
    "COCO-Detection/rpn_R_50_FPN_1x.yaml": rpn_R_50_FPN_1x.get_config,
    "COCO-Detection/rpn_R_50_C4_1x.yaml": rpn_R_50_C4_1x.get_config,
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml": faster_rcnn_R_50_C4_1x.get_config,
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml": faster_rcnn_R_50_DC5_1x.get_config,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml": mask_rcnn_R_50_C4_1x.get_config,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml": mask_rcnn_R_50_DC5_1x.get_config,
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml": cascade_mask_rcnn_R_50_FPN_1x.get_config,
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": (
        lvis_v0_5_mask_rcnn_R_50_FPN_1x.get_config
    ),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml": panoptic_fpn_R_50_1x.get_config,
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml": keypoint_rcnn_R_50_FPN_1x.get_config,
}


@pytest.fixture(scope="module")
def zoo_shapes():
    shapes = json.loads((DATA / "model_zoo_state_dict_shapes.json").read_text())
    family = json.loads((DATA / "model_zoo_state_dict_shapes_family.json").read_text())
    return {**family, **shapes}


@pytest.fixture(scope="module")
def tiny_state_dict():
    return d2.load_detectron2_pkl(TINY_PKL)


@pytest.mark.parametrize("zoo_name", list(ZOO))
def test_name_table_covers_model_zoo(zoo_shapes, zoo_name):
    table = d2.name_table(ZOO[zoo_name]())
    ours = {e.d2_name: list(e.d2_shape) for e in table}
    assert ours == zoo_shapes[zoo_name]


@pytest.mark.parametrize("zoo_name", list(ZOO))
def test_random_zoo_state_dict_round_trip_is_bit_exact(zoo_shapes, zoo_name):
    config = ZOO[zoo_name]()
    rng = np.random.default_rng(0)
    state = {k: rng.random(tuple(s), dtype=np.float32) for k, s in zoo_shapes[zoo_name].items()}
    variables = d2.convert_detectron2_to_flax(state, config)
    abstract = modeling.abstract_variables(config)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
    back = d2.convert_flax_to_detectron2(variables, config)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == np.float32 and np.array_equal(back[k], v), k


def test_tiny_checkpoint_round_trip(tiny_state_dict):
    config = tiny_maskrcnn_config()
    variables = d2.convert_detectron2_to_flax(tiny_state_dict, config)
    back = d2.convert_flax_to_detectron2(jax.device_put(variables), config)
    assert set(back) == set(tiny_state_dict)
    for k, v in tiny_state_dict.items():
        assert np.array_equal(back[k], v), k


def test_layouts_worked_example(tiny_state_dict):
    config = tiny_maskrcnn_config()
    v = d2.convert_detectron2_to_flax(tiny_state_dict, config)
    conv = tiny_state_dict["backbone.bottom_up.res3.0.conv2.weight"]  # OIHW
    hwio = v["params"]["backbone"]["bottom_up"]["res3_0"]["conv2"]["kernel"]
    assert hwio[2, 1, 5, 7] == conv[7, 5, 2, 1]
    deconv = tiny_state_dict["roi_heads.mask_head.deconv.weight"]  # IOHW
    k = v["params"]["roi_heads"]["mask_head"]["deconv"]["kernel"]
    assert k[1, 0, 3, 9] == deconv[3, 9, 1, 0]
    fc1 = tiny_state_dict["roi_heads.box_head.fc1.weight"]  # (out, C*7*7) in (c, y, x) order
    kernel = v["params"]["roi_heads"]["box_head"]["fc1"]["kernel"]  # (7*7*C, out), (y, x, c)
    c, y, x, o = 5, 2, 6, 11
    assert kernel[(y * 7 + x) * 32 + c, o] == fc1[o, c * 49 + y * 7 + x]
    frozen = v[modeling.FROZEN]["backbone"]["bottom_up"]["stem"]["conv1"]["norm"]
    assert np.array_equal(
        frozen["running_var"], tiny_state_dict["backbone.bottom_up.stem.conv1.norm.running_var"]
    )


def test_load_accepts_bare_dict_and_ignores_metadata(tmp_path, tiny_state_dict):
    bare = dict(tiny_state_dict, __author__="someone", pixel_mean=np.zeros(3, np.float32))
    bare["backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked"] = np.int64(7)
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps(bare))
    loaded = d2.load_detectron2_pkl(path)
    assert "__author__" not in loaded
    variables = d2.convert_detectron2_to_flax(loaded, tiny_maskrcnn_config())
    assert "params" in variables


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        d2.load_detectron2_pkl("/nonexistent/nope.pkl")


def test_not_a_pickle(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"PK\x03\x04 this is a zip archive")
    with pytest.raises(ValueError, match="model.pth"):
        d2.load_detectron2_pkl(path)


def test_deeper_checkpoint_for_r50_config_lists_keys(zoo_shapes):
    r101 = zoo_shapes["COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"]
    state = {k: np.zeros(s, np.float32) for k, s in r101.items()}
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(state, mask_rcnn_R_50_FPN_1x.get_config())
    msg = str(info.value)
    assert "R50-FPN" in msg and "R101" in msg
    assert "unexpected in the checkpoint (255)" in msg
    assert "backbone.bottom_up.res4.22.conv1.weight" in msg or "... and" in msg


def test_mis_shaped_and_missing_keys(tiny_state_dict):
    state = dict(tiny_state_dict)
    state["roi_heads.box_predictor.cls_score.weight"] = np.zeros((81, 64), np.float32)
    del state["roi_heads.mask_head.predictor.bias"]
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(state, tiny_maskrcnn_config())
    msg = str(info.value)
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint (81, 64), expected (5, 64)" in msg
    assert "missing from the checkpoint (1)" in msg and "mask_head.predictor.bias" in msg
    assert "num_classes=4" in msg and "num_classes=80" in msg


def test_faster_rcnn_config_rejects_mask_checkpoint(tiny_state_dict):
    config = tiny_maskrcnn_config()
    config.model.mask_on = False
    with pytest.raises(ValueError, match=r"unexpected in the checkpoint \(12\)"):
        d2.convert_detectron2_to_flax(tiny_state_dict, config)


def test_flax_to_detectron2_rejects_wrong_variables(tiny_state_dict):
    variables = d2.convert_detectron2_to_flax(tiny_state_dict, tiny_maskrcnn_config())
    config = tiny_maskrcnn_config()
    config.model.roi_heads.num_classes = 3
    with pytest.raises(ValueError, match="wrong shape"):
        d2.convert_flax_to_detectron2(variables, config)


# --- MSRA / Caffe2 ImageNet backbones ---------------------------------------------------------


def _c2_to_d2(name):
    """Detectron2's `convert_basic_c2_names` for ResNet names, re-stated as rules."""
    name = name.replace("_", ".")
    name = re.sub(r"\.w$", ".weight", name)
    name = re.sub(r"\.b$", ".bias", name)
    for c2, d2n in (
        ("s", "weight"),
        ("bias", "bias"),
        ("rm", "running_mean"),
        ("riv", "running_var"),
    ):
        name = re.sub(rf"bn\.{c2}$", f"norm.{d2n}", name)
    name = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", name)
    name = re.sub(r"^conv1\.", "stem.conv1.", name)
    for c2, d2n in (
        ("branch1", "shortcut"),
        ("branch2a", "conv1"),
        ("branch2b", "conv2"),
        ("branch2c", "conv3"),
    ):
        name = name.replace(f".{c2}.", f".{d2n}.")
    return "backbone.bottom_up." + name


def _fake_msra(config, with_stats=False):
    rng = np.random.default_rng(0)
    out = {"fc1000_w": np.zeros((1000, 2048), np.float32), "fc1000_b": np.zeros(1000, np.float32)}
    for e in d2.name_table(config):
        c2 = d2.msra_name(e.d2_name)
        if c2 is None or (not with_stats and e.d2_name.endswith(("running_mean", "running_var"))):
            continue
        out[c2] = rng.random(e.d2_shape, dtype=np.float32)
    return out


def test_msra_names_invert_detectron2_rules():
    names = [
        e.d2_name
        for e in d2.name_table(tiny_maskrcnn_config())
        if e.d2_name.startswith("backbone.b")
    ]
    c2 = [d2.msra_name(n) for n in names]
    assert "conv1_w" in c2 and "res_conv1_bn_s" in c2 and "res2_0_branch2a_w" in c2
    assert "res3_0_branch1_bn_b" in c2
    assert [_c2_to_d2(n) for n in c2] == names


def test_msra_backbone_initialisation(tmp_path):
    config = mask_rcnn_R_50_FPN_1x.get_config("smoke")
    abstract = modeling.abstract_variables(config)
    init = jax.tree.map(lambda a: np.full(a.shape, 0.5, np.float32), abstract)
    c2 = _fake_msra(config)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": dict(c2, res2_0_branch2a_w_momentum=np.zeros(1))}))
    variables = d2.load_weights(path, config, init)
    p = variables["params"]
    np.testing.assert_array_equal(
        p["backbone"]["bottom_up"]["res2_0"]["conv1"]["kernel"],
        c2["res2_0_branch2a_w"].transpose(2, 3, 1, 0),
    )
    stem_norm = variables[modeling.FROZEN]["backbone"]["bottom_up"]["stem"]["conv1"]["norm"]
    np.testing.assert_array_equal(stem_norm["weight"], c2["res_conv1_bn_s"])
    np.testing.assert_array_equal(stem_norm["running_mean"], 0.0)
    np.testing.assert_array_equal(stem_norm["running_var"], np.float32(1 - 1e-5))
    # FPN and heads keep their initial values.
    np.testing.assert_array_equal(p["backbone"]["fpn_lateral2"]["kernel"], 0.5)
    np.testing.assert_array_equal(p["roi_heads"]["box_head"]["fc1"]["kernel"], 0.5)
    flat_in = traverse_util.flatten_dict(init["params"])
    assert traverse_util.flatten_dict(p).keys() == flat_in.keys()


def test_msra_errors():
    config = mask_rcnn_R_50_FPN_1x.get_config("smoke")
    abstract = modeling.abstract_variables(config)
    init = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract)
    c2 = _fake_msra(config)
    del c2["res4_5_branch2c_w"]
    c2["res4_6_branch2a_w"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        d2.convert_msra_backbone_to_flax(c2, config, init)
    msg = str(info.value)
    assert "res4_5_branch2c_w" in msg and "res4_6_branch2a_w" in msg
    with pytest.raises(ValueError, match="convert_msra_backbone_to_flax"):
        d2.convert_detectron2_to_flax(c2, config)


TINY_RETINANET_PKL = DATA / "tiny_retinanet" / "model_final.pkl"


def _tiny_retinanet_config():
    from jax_rcnn.config import from_detectron2

    return from_detectron2(DATA / "tiny_retinanet" / "config.yaml")


def test_tiny_retinanet_round_trip_is_bit_exact():
    state = d2.load_detectron2_pkl(TINY_RETINANET_PKL)
    config = _tiny_retinanet_config()
    back = d2.convert_flax_to_detectron2(d2.convert_detectron2_to_flax(state, config), config)
    assert set(back) == set(state)
    assert all(np.array_equal(back[k], v) for k, v in state.items())


def test_retinanet_checkpoint_into_mask_rcnn_config_is_a_clear_error():
    state = d2.load_detectron2_pkl(TINY_RETINANET_PKL)
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(state, tiny_maskrcnn_config())
    text = str(info.value)
    assert "checkpoint looks like: RetinaNet" in text
    assert "head.cls_subnet.0.weight" in text  # unexpected names are listed
    assert "proposal_generator.rpn_head.conv.weight" in text  # missing names too


def test_mask_rcnn_checkpoint_into_retinanet_config_is_a_clear_error(tiny_state_dict):
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(tiny_state_dict, _tiny_retinanet_config())
    text = str(info.value)
    assert "does not match the config: RetinaNet R50-FPN" in text
    assert "checkpoint looks like: GeneralizedRCNN" in text
    assert "backbone.top_block.p6.weight" in text


def _tiny_rpn_config():
    from jax_rcnn.config import from_detectron2

    return from_detectron2(DATA / "tiny_rpn" / "config.yaml")


def test_mask_rcnn_checkpoint_into_proposal_network_config_is_a_clear_error(tiny_state_dict):
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(tiny_state_dict, _tiny_rpn_config())
    text = str(info.value)
    assert "does not match the config: ProposalNetwork" in text
    assert "checkpoint looks like: GeneralizedRCNN" in text
    assert "roi_heads.box_head.fc1.weight" in text  # unexpected names are listed


def test_proposal_network_checkpoint_into_mask_rcnn_config_is_a_clear_error(tiny_state_dict):
    rpn_only = {k: v for k, v in tiny_state_dict.items() if not k.startswith("roi_heads.")}
    variables = d2.convert_detectron2_to_flax(rpn_only, _tiny_rpn_config())
    assert set(d2.convert_flax_to_detectron2(variables, _tiny_rpn_config())) == set(rpn_only)
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(rpn_only, tiny_maskrcnn_config())
    text = str(info.value)
    assert "checkpoint looks like: ProposalNetwork" in text
    assert "roi_heads.box_head.fc1.weight" in text  # missing names are listed


def test_retinanet_gn_head_names_follow_detectron2_sequential_indices():
    config = retinanet_R_50_FPN_1x.get_config()
    config.model.retinanet.norm = "GN"
    names = {e.d2_name: e.d2_shape for e in d2.name_table(config)}
    for tower in ("cls_subnet", "bbox_subnet"):
        for conv, norm in ((0, 1), (3, 4), (6, 7), (9, 10)):
            assert names[f"head.{tower}.{conv}.weight"] == (256, 256, 3, 3)
            assert names[f"head.{tower}.{conv}.bias"] == (256,)
            assert names[f"head.{tower}.{norm}.weight"] == (256,)  # GroupNorm
            assert names[f"head.{tower}.{norm}.bias"] == (256,)
    assert not any(n.startswith("head.cls_subnet.2.") for n in names)


TINY_C4_PKL = DATA / "tiny_c4_maskrcnn" / "model_final.pkl"


def _tiny_c4_config():
    from jax_rcnn.config import from_detectron2

    return from_detectron2(DATA / "tiny_c4_maskrcnn" / "config.yaml")


def test_tiny_c4_checkpoint_round_trip_and_res5_head_names():
    state = d2.load_detectron2_pkl(TINY_C4_PKL)
    config = _tiny_c4_config()
    variables = d2.convert_detectron2_to_flax(state, config)
    res5 = variables["params"]["roi_heads"]["res5_0"]
    assert res5["conv1"]["kernel"].shape == (1, 1, 128, 64)  # stride in conv1, res4 width in
    assert res5["shortcut"]["kernel"].shape == (1, 1, 128, 256)
    assert "norm" in variables[modeling.FROZEN]["roi_heads"]["res5_2"]["conv3"]  # FrozenBN
    back = d2.convert_flax_to_detectron2(jax.device_put(variables), config)
    assert set(back) == set(state)
    assert all(np.array_equal(back[k], v) for k, v in state.items())


def test_res5_head_is_not_frozen_by_freeze_at():
    config = mask_rcnn_R_50_C4_1x.get_config()
    prefixes = modeling.frozen_module_prefixes(config)
    assert ("backbone", "stem") in prefixes and ("backbone", "res2_2") in prefixes
    assert not any(p[0] == "roi_heads" or "res3_0" in p for p in prefixes)


def test_c4_checkpoint_into_fpn_config_names_the_first_mismatched_key():
    state = d2.load_detectron2_pkl(TINY_C4_PKL)
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(state, tiny_maskrcnn_config())
    text = str(info.value)
    assert "first mismatched key: backbone.stem.conv1.weight (unexpected" in text
    assert "plain ResNet backbone" in text and "Res5ROIHeads (roi_heads.res5.*: C4)" in text
    assert "R50-FPN" in text


def test_fpn_checkpoint_into_c4_config_names_the_first_mismatched_key(tiny_state_dict):
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(tiny_state_dict, _tiny_c4_config())
    text = str(info.value)
    first = next(iter(tiny_state_dict))
    assert f"first mismatched key: {first} (unexpected" in text
    assert "does not match the config: R50-C4 (Res5ROIHeads)" in text
    assert "FPN backbone (backbone.bottom_up.*" in text


def test_dc5_checkpoint_into_c4_config_is_an_error():
    zoo = json.loads((DATA / "model_zoo_state_dict_shapes_family.json").read_text())
    shapes = zoo["COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml"]
    state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    first = r"first mismatched key: backbone\.res5\.0\.\w+\.weight \(unexpected"
    with pytest.raises(ValueError, match=first):
        d2.convert_detectron2_to_flax(state, mask_rcnn_R_50_C4_1x.get_config())


@pytest.mark.parametrize("layout", ["C4", "DC5"])
def test_msra_backbone_initialisation_c4_res5_head_and_dc5(layout):
    """ImageNet `res5_*` goes to C4's ROI head (`roi_heads.res5.*`) or DC5's backbone."""
    config = (mask_rcnn_R_50_C4_1x if layout == "C4" else mask_rcnn_R_50_DC5_1x).get_config("smoke")
    abstract = modeling.abstract_variables(config)
    init = jax.tree.map(lambda a: np.full(a.shape, 0.5, np.float32), abstract)
    c2 = _fake_msra(config)
    assert "res5_2_branch2c_w" in c2 and "conv1_w" in c2
    variables = d2.convert_msra_backbone_to_flax(c2, config, init)
    p = variables["params"]
    res5 = p["roi_heads"]["res5_0"] if layout == "C4" else p["backbone"]["res5_0"]
    np.testing.assert_array_equal(
        res5["conv2"]["kernel"], c2["res5_0_branch2b_w"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        p["backbone"]["stem"]["conv1"]["kernel"], c2["conv1_w"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(p["roi_heads"]["box_predictor"]["cls_score"]["kernel"], 0.5)


@pytest.mark.parametrize(
    "name", [f"{k}_rcnn_R_50_{a}" for k in ("faster", "mask") for a in ("C4", "DC5")]
)
def test_3x_c4_dc5_configs_have_the_1x_checkpoint_names(zoo_shapes, name):
    """The 3x model-zoo checkpoints have the 1x architecture (only the schedule differs)."""
    import importlib

    config = importlib.import_module(f"configs.{name}_3x").get_config()
    folder = "COCO-Detection" if name.startswith("faster") else "COCO-InstanceSegmentation"
    ours = {e.d2_name: list(e.d2_shape) for e in d2.name_table(config)}
    assert ours == zoo_shapes[f"{folder}/{name}_1x.yaml"]


# ---------------------------------------------------------------------------------------------
# Cascade R-CNN


def test_cascade_3x_config_has_the_1x_checkpoint_names(zoo_shapes):
    table = d2.name_table(cascade_mask_rcnn_R_50_FPN_3x.get_config())
    ours = {e.d2_name: list(e.d2_shape) for e in table}
    shapes = zoo_shapes["Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"]
    assert ours == shapes
    assert shapes["roi_heads.box_predictor.2.bbox_pred.weight"] == [4, 1024]
    assert shapes["roi_heads.box_head.1.fc1.weight"] == [1024, 12544]


def test_cascade_fc1_of_every_stage_is_chw_flattened():
    table = {e.d2_name: e for e in d2.name_table(cascade_mask_rcnn_R_50_FPN_1x.get_config())}
    for k in range(3):
        assert table[f"roi_heads.box_head.{k}.fc1.weight"].layout == "linear_chw"
        assert table[f"roi_heads.box_head.{k}.fc2.weight"].layout == "linear"


def _zoo_state(zoo_shapes, name):
    return {k: np.zeros(tuple(s), np.float32) for k, s in zoo_shapes[name].items()}


def test_cascade_checkpoint_into_mask_rcnn_config_names_the_first_mismatched_key(zoo_shapes):
    state = _zoo_state(zoo_shapes, "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(state, mask_rcnn_R_50_FPN_1x.get_config())
    text = str(info.value)
    assert re.search(r"first mismatched key: roi_heads\.box_head\.0\.fc1\.\w+ \(unexpected", text)
    assert "CascadeROIHeads with 3 stages (roi_heads.box_head.{k}.*)" in text


def test_mask_rcnn_checkpoint_into_cascade_config_is_an_error(zoo_shapes):
    state = _zoo_state(zoo_shapes, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    with pytest.raises(ValueError) as info:
        d2.convert_detectron2_to_flax(state, cascade_mask_rcnn_R_50_FPN_1x.get_config())
    text = str(info.value)
    assert re.search(r"first mismatched key: roi_heads\.box_head\.fc1\.\w+ \(unexpected", text)
    assert "R50-FPN CascadeROIHeads (3 stages)" in text


def test_two_stage_cascade_checkpoint_into_three_stage_config_is_an_error(zoo_shapes):
    state = _zoo_state(zoo_shapes, "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    state = {k: v for k, v in state.items() if ".2." not in k or not k.startswith("roi_heads.box")}
    with pytest.raises(ValueError, match=r"roi_heads\.box_head\.2\.fc1\.\w+ \(missing"):
        d2.convert_detectron2_to_flax(state, cascade_mask_rcnn_R_50_FPN_1x.get_config())
