"""Tests of `jax_rcnn.config` (loading, validation) and `jax_rcnn.config_from_detectron2`
(Detectron2 translation, also reached as `jax_rcnn.config.from_detectron2`)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import yaml

from jax_rcnn import config as cfg_lib
from jax_rcnn import config_from_detectron2 as d2_lib

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
ZOO = DATA / "detectron2_configs"
FIXTURE = DATA / "tiny_maskrcnn"
BASE_YAML = ZOO / "Base-RCNN-FPN.yaml"

PY_CONFIGS = (
    "configs/faster_rcnn_R_50_FPN_1x.py",
    "configs/faster_rcnn_R_50_FPN_3x.py",
    "configs/mask_rcnn_R_50_FPN_1x.py",
    "configs/mask_rcnn_R_50_FPN_3x.py",
    "configs/retinanet_R_50_FPN_1x.py",
    "configs/retinanet_R_50_FPN_3x.py",
    "configs/rpn_R_50_FPN_1x.py",
    "configs/cascade_mask_rcnn_R_50_FPN_1x.py",
    "configs/cascade_mask_rcnn_R_50_FPN_3x.py",
    "configs/keypoint_rcnn_R_50_FPN_1x.py",
    "configs/keypoint_rcnn_R_50_FPN_3x.py",
    "configs/rpn_R_50_C4_1x.py",
    *(
        f"configs/{kind}_rcnn_R_50_{arch}_{sched}.py"
        for kind in ("faster", "mask")
        for arch in ("C4", "DC5")
        for sched in ("1x", "3x")
    ),
)
ZOO_YAMLS = (
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
)


def _as_tuples(value):
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _override(tmp_path: Path, text: str) -> Path:
    """A model-zoo style YAML: Base-RCNN-FPN + the given overrides."""
    return _write(tmp_path, f'_BASE_: "{BASE_YAML}"\n{text}')


# ---------------------------------------------------------------------------------------------
# load_config
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", PY_CONFIGS + tuple(f"{p}:smoke" for p in PY_CONFIGS))
def test_repo_configs_load_lock_and_validate(spec, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative specs resolve from the repository root too
    config = cfg_lib.load_config(spec)
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.is_locked
    cfg_lib.validate(config)
    assert (config.input.min_size_test == 128) == spec.endswith(":smoke")


def test_load_config_absolute_path_from_other_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = cfg_lib.load_config(f"{REPO / 'configs/mask_rcnn_R_50_FPN_3x.py'}:smoke")
    assert config.model.roi_heads.num_classes == 3
    assert config.solver.max_iter == 10


def test_load_config_imports_its_own_configs_package(tmp_path, monkeypatch):
    """`from configs import common` resolves next to the config file (grandparent on path)."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_config may extend it
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "my_exp.py").write_text(
        "import ml_collections\n"
        "from configs import common\n"
        "def get_config(arg=None):\n"
        "    c = common.base_config(mask_on=False)\n"
        "    c.seed = 7 if arg is None else int(arg)\n"
        "    return c\n"
    )
    assert cfg_lib.load_config(str(tmp_path / "configs" / "my_exp.py")).seed == 7
    config = cfg_lib.load_config(f"{tmp_path / 'configs' / 'my_exp.py'}:11")
    assert config.seed == 11
    assert config.is_locked


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        cfg_lib.load_config("configs/nope.py:smoke")
    no_fn = _write(tmp_path, "X = 1\n", "no_fn.py")
    with pytest.raises(ValueError, match="no get_config"):
        cfg_lib.load_config(str(no_fn))
    bad = _write(tmp_path, "def get_config(arg=None):\n    return {}\n", "bad.py")
    with pytest.raises(ValueError, match="ConfigDict"):
        cfg_lib.load_config(str(bad))
    with pytest.raises(ValueError, match="unknown config variant"):
        cfg_lib.load_config("configs/mask_rcnn_R_50_FPN_1x.py:huge")


@pytest.mark.parametrize("first", ["jax_rcnn.config", "jax_rcnn.config_from_detectron2"])
def test_from_detectron2_reachable_from_both_modules_in_any_import_order(first):
    """`config_from_detectron2` imports `config`; `config` re-exports its public names on first
    access, so either module may be imported first (no import cycle)."""
    code = (
        f"import {first}\n"
        "from jax_rcnn.config import D2_TO_JAX_RCNN, detectron2_config, from_detectron2\n"
        "from jax_rcnn import config_from_detectron2 as d2\n"
        "assert from_detectron2 is d2.from_detectron2\n"
        "assert detectron2_config is d2.detectron2_config and D2_TO_JAX_RCNN is d2.D2_TO_JAX_RCNN\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert cfg_lib.from_detectron2 is d2_lib.from_detectron2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cfg_lib.nope  # noqa: B018


# ---------------------------------------------------------------------------------------------
# The Detectron2 key tables
# ---------------------------------------------------------------------------------------------
def test_every_detectron2_key_has_exactly_one_rule():
    tables = {
        "mapped": d2_lib._MAPPED,
        "no_effect": d2_lib._NO_EFFECT,
        "restricted": d2_lib._RESTRICTED,
        "inert": d2_lib._INERT,
    }
    keys = cfg_lib._flatten(d2_lib._D2_DEFAULTS)
    for key in keys:
        hits = [
            name
            for name, table in tables.items()
            if key in table or any(p.endswith(".") and key.startswith(p) for p in table)
        ]
        # A mapped key may carry a restriction on its values too (MODEL.RESNETS.NORM).
        assert len(hits) == 1 or hits == ["mapped", "restricted"], f"{key}: {hits}"
    for name, table in tables.items():
        for entry in table:
            matched = entry in keys or any(k.startswith(entry) for k in keys if entry[-1] == ".")
            assert matched, f"{name} entry {entry} is not a Detectron2 key"


def test_mapped_keys_exist_in_the_schema():
    base = cfg_lib.to_flat_dict(cfg_lib._common().base_config(mask_on=True))
    retina = cfg_lib.to_flat_dict(cfg_lib._common().base_config(meta_architecture="RetinaNet"))
    cascade = cfg_lib._common().base_config(mask_on=True)
    cfg_lib._common().cascade(cascade.model)
    cascade = cfg_lib.to_flat_dict(cascade)
    panoptic = cfg_lib.to_flat_dict(cfg_lib._common().base_config(meta_architecture="PanopticFPN"))
    keypoint = cfg_lib._common().base_config()
    cfg_lib._common().keypoint(keypoint)
    keypoint = cfg_lib.to_flat_dict(keypoint)
    for d2_key, ours in d2_lib.D2_TO_JAX_RCNN.items():
        schema = retina if d2_key.startswith("MODEL.RETINANET.") else base
        schema = cascade if d2_key.startswith("MODEL.ROI_BOX_CASCADE_HEAD.") else schema
        schema = (
            panoptic
            if d2_key.startswith(("MODEL.SEM_SEG_HEAD.", "MODEL.PANOPTIC_FPN."))
            else schema
        )
        if "KEYPOINT" in d2_key:
            schema = keypoint
        assert ours in schema, f"{d2_key} -> {ours} is not a key of configs/common.py"


def test_detectron2_defaults_have_the_fixture_dump_keys():
    """The fixture is a real `cfg.dump()`: our defaults table has exactly its keys."""
    dump = cfg_lib._flatten(yaml.safe_load((FIXTURE / "config.yaml").read_text()))
    assert set(dump) == set(cfg_lib._flatten(d2_lib._D2_DEFAULTS))


def test_detectron2_config_merges_like_yacs():
    d2 = d2_lib.detectron2_config(ZOO / ZOO_YAMLS[2])
    assert d2["SOLVER.STEPS"] == (210000, 250000)  # "(210000, 250000)" literal-evaluated
    assert d2["MODEL.RPN.PRE_NMS_TOPK_TRAIN"] == 2000  # from the base
    assert d2["MODEL.RPN.POST_NMS_TOPK_TRAIN"] == 1000
    assert d2["INPUT.MASK_FORMAT"] == "polygon"  # Detectron2's default, not overridden
    assert d2["SEED"] == -1
    assert d2["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"] == 7


# ---------------------------------------------------------------------------------------------
# from_detectron2: the parity fixture and the model zoo
# ---------------------------------------------------------------------------------------------
# config.json entries that are not a mapped Detectron2 key, and how they are checked.
_FIXTURE_JSON_SPECIAL = {
    "base_config",  # provenance
    "META_ARCHITECTURE",  # restricted to GeneralizedRCNN: accepted means equal
    "MODEL.BACKBONE.NAME",  # restricted: accepted means equal
    "MODEL.ROI_BOX_HEAD.NAME",
    "MODEL.ROI_MASK_HEAD.NAME",
    "MODEL.PIXEL_MEAN (BGR)",
    "size_divisibility (FPN)",
    "classes (contiguous id: name; annotations.json category_id = id + 1)",
    "training_fixture_overrides",  # test-only overrides of the training fixture
    "weights_training",  # how the fixture weights were trained
}


def test_fixture_dump_matches_config_json():
    config = cfg_lib.from_detectron2(FIXTURE / "config.yaml")
    expected = json.loads((FIXTURE / "config.json").read_text())
    compared = 0
    for key, value in expected.items():
        if key in _FIXTURE_JSON_SPECIAL:
            continue
        ours = d2_lib.D2_TO_JAX_RCNN[key]  # KeyError = a json entry nobody checks
        got = cfg_lib.to_flat_dict(config)[ours]
        assert got == _as_tuples(value), f"{key} -> {ours}: {got!r} != {value!r}"
        compared += 1
    assert compared >= 60
    assert config.model.pixel_mean == tuple(expected["MODEL.PIXEL_MEAN (BGR)"])
    assert config.input.size_divisibility == expected["size_divisibility (FPN)"]
    assert config.input.pad_mode == "size_divisibility"
    assert config.data.name == "fixture_voc_tiny"
    assert config.solver.steps == (320,)
    assert config.solver.max_iter == 400
    assert config.solver.checkpoint_period == 400
    assert config.solver.ims_per_batch == 1
    assert config.solver.warmup_iters == 100
    assert config.input.random_flip == "none"
    assert config.seed == 0
    assert config.is_locked


@pytest.mark.parametrize(
    "name, mask_on, depth, steps, max_iter",
    [
        (ZOO_YAMLS[0], False, 50, (60000, 80000), 90000),
        (ZOO_YAMLS[1], True, 50, (60000, 80000), 90000),
        (ZOO_YAMLS[2], True, 50, (210000, 250000), 270000),
        (ZOO_YAMLS[3], True, 101, (210000, 250000), 270000),
    ],
)
def test_model_zoo_yaml(name, mask_on, depth, steps, max_iter):
    config = cfg_lib.from_detectron2(ZOO / name)
    assert config.is_locked
    assert config.model.mask_on is mask_on
    assert config.model.resnets.depth == depth
    assert config.solver.steps == steps
    assert config.solver.max_iter == max_iter
    assert config.model.weights == f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
    assert config.input.min_size_train == (640, 672, 704, 736, 768, 800)
    assert config.solver.ims_per_batch == 16
    assert config.solver.base_lr == 0.02
    assert config.model.rpn.pre_nms_topk_train == 2000
    assert config.model.rpn.post_nms_topk_train == 1000
    assert config.model.roi_box_head.pooler_resolution == 7
    assert config.model.roi_mask_head.num_conv == 4
    assert config.model.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert config.input.mask_format == "polygon"  # Detectron2's default INPUT.MASK_FORMAT
    assert config.input.pad_mode == "size_divisibility"
    assert config.input.size_divisibility == 32
    assert config.data.name == "coco_2017"
    cfg_lib.validate(config)


@pytest.mark.parametrize(
    "py, yml",
    [
        ("configs/faster_rcnn_R_50_FPN_1x.py", ZOO_YAMLS[0]),
        ("configs/mask_rcnn_R_50_FPN_1x.py", ZOO_YAMLS[1]),
        ("configs/mask_rcnn_R_50_FPN_3x.py", ZOO_YAMLS[2]),
        ("configs/retinanet_R_50_FPN_1x.py", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"),
        ("configs/retinanet_R_50_FPN_3x.py", "COCO-Detection/retinanet_R_50_FPN_3x.yaml"),
        ("configs/rpn_R_50_FPN_1x.py", "COCO-Detection/rpn_R_50_FPN_1x.yaml"),
        ("configs/rpn_R_50_C4_1x.py", "COCO-Detection/rpn_R_50_C4_1x.yaml"),
        ("configs/panoptic_fpn_R_50_1x.py", "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"),
        ("configs/panoptic_fpn_R_50_3x.py", "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"),
    ],
)
def test_model_zoo_yaml_equals_our_config_file(py, yml):
    """configs/*.py reproduce the model zoo: only the documented jax_rcnn choices differ."""
    ours = cfg_lib.to_flat_dict(cfg_lib.load_config(py))
    d2 = cfg_lib.to_flat_dict(cfg_lib.from_detectron2(ZOO / yml))
    assert set(ours) == set(d2)
    diff = {k: (ours[k], d2[k]) for k in ours if ours[k] != d2[k]}
    suffix = "_panoptic_separated" if "Panoptic" in yml else ""
    assert diff == {
        "input.pad_mode": ("buckets", "size_divisibility"),
        "input.auto_buckets": (False, True),
        "data.train.name": ("", f"coco_2017_train{suffix}"),
        "data.test.name": ("", f"coco_2017_val{suffix}"),
        "input.mask_format": ("bitmask", "polygon"),
        "model.weights": ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
    }


def test_retinanet_zoo_yaml_with_its_eval_anchor_sizes():
    """Base-RetinaNet.yaml writes its anchor sizes with `!!python/object/apply:eval`."""
    config = cfg_lib.from_detectron2(ZOO / "COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    m = config.model
    assert m.meta_architecture == "RetinaNet"
    assert m.backbone.name == "build_retinanet_resnet_fpn_backbone"
    assert m.anchor_generator.sizes[0] == (32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3))
    assert m.anchor_generator.sizes[4][2] == pytest.approx(812.7493386077181)
    assert m.retinanet.smooth_l1_loss_beta == 0.0
    assert config.solver.base_lr == 0.01
    assert "rpn" not in m and "roi_heads" not in m  # no inert keys in a RetinaNet config


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('true')", "open('x')", "[x.__class__ for x in [1]]", "f(1)"],
)
def test_yaml_eval_accepts_arithmetic_only(tmp_path, expr):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval [{expr!r}]\n"
    )
    with pytest.raises(ValueError, match="only arithmetic"):
        cfg_lib.from_detectron2(path)


def test_retinanet_rejects_mask_on(tmp_path):
    path = tmp_path / "cfg.yaml"
    base = ZOO / "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
    path.write_text(f"_BASE_: {str(base)!r}\nMODEL:\n  MASK_ON: true\n")
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        cfg_lib.from_detectron2(path)


def test_retinanet_ignores_rcnn_keys_as_detectron2_does(tmp_path):
    path = tmp_path / "cfg.yaml"
    base = ZOO / "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
    path.write_text(f"_BASE_: {str(base)!r}\nMODEL:\n  ROI_HEADS:\n    NAME: CascadeROIHeads\n")
    assert cfg_lib.from_detectron2(path).model.meta_architecture == "RetinaNet"


def test_rpn_zoo_yaml_is_a_proposal_network():
    config = cfg_lib.from_detectron2(ZOO / "COCO-Detection/rpn_R_50_FPN_1x.yaml")
    m = config.model
    assert m.meta_architecture == "ProposalNetwork"
    assert m.rpn.post_nms_topk_test == 2000 and m.rpn.pre_nms_topk_test == 1000
    assert "roi_heads" not in m and "roi_box_head" not in m and "retinanet" not in m
    assert cfg_lib.num_classes(config) == 1


def test_rpn_c4_zoo_yaml_is_a_proposal_network_on_res4():
    """Base-RCNN-C4 + ProposalNetwork: plain ResNet to res4, 15 anchors, top-k 12000 / 2000."""
    config = cfg_lib.from_detectron2(ZOO / "COCO-Detection/rpn_R_50_C4_1x.yaml")
    m = config.model
    assert m.meta_architecture == "ProposalNetwork" and cfg_lib.layout(config) == "C4"
    assert m.backbone.name == "build_resnet_backbone" and "fpn" not in m
    assert m.resnets.out_features == m.rpn.in_features == ("res4",)
    assert m.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    assert (m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test) == (12000, 2000)
    assert (m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train) == (12000, 2000)
    assert "roi_heads" not in m and config.input.size_divisibility == 0


def test_plain_proposal_network_layout_follows_the_dilation(tmp_path):
    """Without ROI heads, a plain-ResNet ProposalNetwork is C4, or DC5 with a dilated res5."""
    base = ZOO / "COCO-Detection/rpn_R_50_C4_1x.yaml"
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"_BASE_: {str(base)!r}\nMODEL:\n  RESNETS:\n    OUT_FEATURES: ['res5']\n"
        "    RES5_DILATION: 2\n  RPN:\n    IN_FEATURES: ['res5']\n"
    )
    config = cfg_lib.from_detectron2(path)
    assert cfg_lib.layout(config) == "DC5" and config.model.rpn.in_features == ("res5",)


def test_proposal_network_rejects_mask_on(tmp_path):
    path = tmp_path / "cfg.yaml"
    base = ZOO / "COCO-Detection/rpn_R_50_FPN_1x.yaml"
    path.write_text(f"_BASE_: {str(base)!r}\nMODEL:\n  MASK_ON: true\n")
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        cfg_lib.from_detectron2(path)


def test_proposal_network_ignores_roi_keys_but_reads_rpn_keys(tmp_path):
    path = tmp_path / "cfg.yaml"
    base = ZOO / "COCO-Detection/rpn_R_50_FPN_1x.yaml"
    path.write_text(
        f"_BASE_: {str(base)!r}\nMODEL:\n  ROI_HEADS:\n    NAME: CascadeROIHeads\n"
        "  RPN:\n    NMS_THRESH: 0.6\n"
    )
    config = cfg_lib.from_detectron2(path)
    assert config.model.rpn.nms_thresh == 0.6
    path.write_text(f"_BASE_: {str(base)!r}\nMODEL:\n  RPN:\n    HEAD_NAME: Other\n")
    with pytest.raises(ValueError, match="MODEL.RPN.HEAD_NAME"):
        cfg_lib.from_detectron2(path)


def test_roi_keys_are_not_keys_of_a_proposal_network_config():
    config = cfg_lib.load_config("configs/rpn_R_50_FPN_1x.py")
    with pytest.raises(AttributeError):
        config.model.roi_heads.num_classes = 3
    with pytest.raises(ValueError, match="model.mask_on"):
        with config.unlocked():
            config.model.mask_on = True
        cfg_lib.validate(config)


@pytest.mark.parametrize(
    "yml, mask_on",
    [
        ("Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x.yaml", False),
        ("Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml", True),
    ],
)
def test_detectron1_comparison_yamls_select_the_legacy_pooler(yml, mask_on):
    config = cfg_lib.from_detectron2(ZOO / yml)
    m = config.model
    assert m.mask_on is mask_on
    assert m.roi_box_head.pooler_type == "ROIAlign" and m.roi_box_head.pooler_sampling_ratio == 2
    assert m.rpn.smooth_l1_beta == 0.1111 and m.roi_box_head.smooth_l1_beta == 1.0
    assert tuple(config.input.min_size_train) == (800,)
    mask_type = "ROIAlign" if mask_on else "ROIAlignV2"
    assert m.roi_mask_head.pooler_type == mask_type


def test_rcnn_keys_are_not_keys_of_a_retinanet_config():
    config = cfg_lib.load_config("configs/retinanet_R_50_FPN_1x.py")
    with pytest.raises(AttributeError):
        config.model.rpn.nms_thresh = 0.5


# ---------------------------------------------------------------------------------------------
# from_detectron2: accepted, converted and rejected keys
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 3\n    NORM: ''\n",
        "MODEL:\n  PANOPTIC_FPN:\n    COMBINE:\n      ENABLED: false\n",
        "MODEL:\n  ROI_KEYPOINT_HEAD:\n    NUM_KEYPOINTS: 5\n",
        "MODEL:\n  ROI_BOX_CASCADE_HEAD:\n    IOUS: (0.5,)\n",
        "MODEL:\n  RESNETS:\n    DEFORM_MODULATED: true\n",
        "MODEL:\n  DEVICE: cpu\nOUTPUT_DIR: /tmp/x\nCUDNN_BENCHMARK: true\nVIS_PERIOD: 5\n",
        "GLOBAL:\n  HACK: 3.0\nFLOAT32_PRECISION: high\n",
        "TEST:\n  EXPECTED_RESULTS: [['bbox', 'AP', 38.5, 0.2]]\n  AUG:\n    FLIP: false\n",
        "INPUT:\n  CROP:\n    SIZE: [0.5, 0.5]\n",
        "SOLVER:\n  WEIGHT_DECAY_BIAS: null\n",
        "TEST:\n  PRECISE_BN:\n    ENABLED: true\n",  # no trainable BN: PreciseBN is a no-op
        "MODEL:\n  MASK_ON: false\n  ROI_MASK_HEAD:\n    NAME: SomethingElse\n",
    ],
)
def test_inert_and_no_effect_keys_are_accepted(tmp_path, text):
    config = cfg_lib.from_detectron2(_override(tmp_path, text))
    reference = cfg_lib.from_detectron2(BASE_YAML)
    assert cfg_lib.to_flat_dict(config) == cfg_lib.to_flat_dict(reference)


@pytest.mark.parametrize(
    "text, key, value",
    [
        (
            "MODEL:\n  META_ARCHITECTURE: PanopticFPN\n  MASK_ON: false\n",
            "MODEL.MASK_ON",
            "False",
        ),
        (
            "MODEL:\n  META_ARCHITECTURE: PanopticFPN\n  MASK_ON: true\n  SEM_SEG_HEAD:\n"
            "    NAME: OtherHead\n",
            "MODEL.SEM_SEG_HEAD.NAME",
            "OtherHead",
        ),
        (
            "MODEL:\n  META_ARCHITECTURE: RetinaNet\n  RETINANET:\n    NORM: BN\n",
            "MODEL.RETINANET.NORM",
            "BN",
        ),
        (
            "MODEL:\n  META_ARCHITECTURE: RetinaNet\n  RETINANET:\n    BBOX_REG_LOSS_TYPE: eiou\n",
            "MODEL.RETINANET.BBOX_REG_LOSS_TYPE",
            "eiou",
        ),
        ("MODEL:\n  RPN:\n    BBOX_REG_LOSS_TYPE: l2\n", "MODEL.RPN.BBOX_REG_LOSS_TYPE", "l2"),
        (
            "MODEL:\n  ROI_BOX_HEAD:\n    BBOX_REG_LOSS_TYPE: my.py:f\n",
            "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
            "my.py:f",
        ),
        (
            "MODEL:\n  META_ARCHITECTURE: RetinaNet\n  KEYPOINT_ON: true\n",
            "MODEL.KEYPOINT_ON",
            "True",
        ),
        (
            "MODEL:\n  KEYPOINT_ON: true\n  ROI_KEYPOINT_HEAD:\n    NAME: KRCNNConvHead\n",
            "MODEL.ROI_KEYPOINT_HEAD.NAME",
            "KRCNNConvHead",
        ),
        ("MODEL:\n  LOAD_PROPOSALS: true\n", "MODEL.LOAD_PROPOSALS", "True"),
        (
            "MODEL:\n  RESNETS:\n    DEFORM_ON_PER_STAGE: [False, True, True, True]\n",
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
            "True",
        ),
        ("MODEL:\n  RESNETS:\n    NORM: LN\n", "MODEL.RESNETS.NORM", "LN"),
        ("MODEL:\n  FPN:\n    NORM: LN\n", "MODEL.FPN.NORM", "LN"),
        ("MODEL:\n  BACKBONE:\n    NAME: build_vgg_backbone\n", "MODEL.BACKBONE.NAME", ""),
        ("MODEL:\n  ROI_HEADS:\n    NAME: RROIHeads\n", "MODEL.ROI_HEADS.NAME", "RROIHeads"),
        (
            "MODEL:\n  ROI_BOX_HEAD:\n    NAME: FastRCNNConvHead\n",
            "MODEL.ROI_BOX_HEAD.NAME",
            "FastRCNNConvHead",
        ),
        (
            "MODEL:\n  MASK_ON: true\n  ROI_MASK_HEAD:\n    NAME: PointRendMaskHead\n",
            "MODEL.ROI_MASK_HEAD.NAME",
            "PointRendMaskHead",
        ),
        (
            "MODEL:\n  PROPOSAL_GENERATOR:\n    NAME: RRPN\n",
            "MODEL.PROPOSAL_GENERATOR.NAME",
            "RRPN",
        ),
        ("INPUT:\n  CROP:\n    ENABLED: true\n", "INPUT.CROP.ENABLED", "True"),
        ("TEST:\n  AUG:\n    ENABLED: true\n", "TEST.AUG.ENABLED", "True"),
        ("SOLVER:\n  REFERENCE_WORLD_SIZE: 8\n", "SOLVER.REFERENCE_WORLD_SIZE", "8"),
        (
            "MODEL:\n  RESNETS:\n    NORM: BN\nTEST:\n  PRECISE_BN:\n    ENABLED: true\n",
            "TEST.PRECISE_BN.ENABLED",
            "True",
        ),
    ],
)
def test_unsupported_values_are_rejected_by_name(tmp_path, text, key, value):
    with pytest.raises(ValueError, match="not supported") as info:
        cfg_lib.from_detectron2(_override(tmp_path, text))
    assert key in str(info.value)
    assert value in str(info.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("MODEL:\n  RPN:\n    FOO: 1\n", "MODEL.RPN.FOO"),
        ("FOO: 1\n", "FOO"),
        ("MODEL:\n  RETINANET:\n    FOO: 1\n", "MODEL.RETINANET.FOO"),  # unknown even if inert
        ("MODEL:\n  POINT_HEAD:\n    NUM_CLASSES: 1\n", "MODEL.POINT_HEAD"),
    ],
)
def test_keys_detectron2_does_not_have_are_rejected(tmp_path, text, key):
    with pytest.raises(ValueError, match="is not a Detectron2 config key") as info:
        cfg_lib.from_detectron2(_override(tmp_path, text))
    assert key in str(info.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("MODEL:\n  MASK_ON: 'yes'\n", "MODEL.MASK_ON"),
        ("MODEL:\n  RPN: 3\n", "MODEL.RPN"),
        ("MODEL:\n  RPN:\n    NMS_THRESH:\n      A: 1\n", "MODEL.RPN.NMS_THRESH"),
        ("MODEL:\n  RESNETS:\n    DEPTH: 50.5\n", "MODEL.RESNETS.DEPTH"),
        ("SOLVER:\n  STEPS: [a, b]\n", "SOLVER.STEPS"),
        ("VERSION: 1\n", "VERSION"),
    ],
)
def test_wrong_types_are_rejected_by_name(tmp_path, text, key):
    with pytest.raises(ValueError) as info:
        cfg_lib.from_detectron2(_override(tmp_path, text))
    assert key in str(info.value)


def test_conversions(tmp_path):
    text = (
        "MODEL:\n"
        "  ANCHOR_GENERATOR:\n    SIZES: [32, 64]\n    ASPECT_RATIOS: [[1, 2]]\n"
        "  PROPOSAL_GENERATOR:\n    MIN_SIZE: 2\n"
        "INPUT:\n  MIN_SIZE_TRAIN: 600\n"
        "SOLVER:\n  AMP:\n    ENABLED: true\n"
        "SEED: 42\n"
    )
    config = cfg_lib.from_detectron2(_override(tmp_path, text))
    # A flat SIZES list is one entry for every level (anchor_generator._broadcast_params).
    assert config.model.anchor_generator.sizes == ((32, 64),)
    assert config.model.anchor_generator.aspect_ratios == ((1.0, 2.0),)
    assert isinstance(config.model.anchor_generator.aspect_ratios[0][0], float)
    assert config.model.rpn.min_size == 2.0
    assert config.input.min_size_train == (600,)
    assert config.train.compute_dtype == "bfloat16"
    assert config.seed == 42

    ranged = "INPUT:\n  MIN_SIZE_TRAIN: 600\n  MIN_SIZE_TRAIN_SAMPLING: range\n"
    config = cfg_lib.from_detectron2(_override(tmp_path, ranged))
    assert config.input.min_size_train == (600, 600)
    ranged = "INPUT:\n  MIN_SIZE_TRAIN: (640, 800)\n  MIN_SIZE_TRAIN_SAMPLING: range\n"
    assert cfg_lib.from_detectron2(_override(tmp_path, ranged)).input.min_size_train == (640, 800)


def test_dataset_name():
    assert d2_lib._dataset_name(("coco_2017_train",), ("coco_2017_val",)) == "coco_2017"
    assert d2_lib._dataset_name(["fixture_voc_tiny"], ["fixture_voc_tiny"]) == "fixture_voc_tiny"
    assert d2_lib._dataset_name(("a_train",), ("b_val",)) == "a_train+b_val"
    assert d2_lib._dataset_name((), ()) == ""


def test_yaml_without_fpn_base_is_detectron2_c4(tmp_path):
    """Without Base-RCNN-FPN, Detectron2's defaults describe a C4 model, and so does ours."""
    config = cfg_lib.from_detectron2(_write(tmp_path, "MODEL:\n  MASK_ON: true\n"))
    m = config.model
    assert cfg_lib.layout(config) == "C4"
    assert m.backbone.name == "build_resnet_backbone" and "fpn" not in m
    assert m.roi_heads.name == "Res5ROIHeads" and m.roi_heads.in_features == ("res4",)
    assert m.rpn.pre_nms_topk_test == 6000  # Detectron2's default (Base-RCNN-C4 says the same)
    assert config.input.size_divisibility == 0


def test_res5_roi_heads_on_an_fpn_is_an_error_naming_the_keys(tmp_path):
    path = _override(tmp_path, "MODEL:\n  ROI_HEADS:\n    NAME: Res5ROIHeads\n")
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.NAME\].*Res5ROIHeads needs"):
        cfg_lib.from_detectron2(path)


def test_standard_roi_heads_in_a_c4_config_is_an_error_naming_the_key():
    config = cfg_lib.load_config("configs/mask_rcnn_R_50_C4_1x.py")
    with config.unlocked():
        config.model.roi_heads.name = "StandardROIHeads"
    with pytest.raises(ValueError, match=r"config.model.roi_heads.name = 'StandardROIHeads'"):
        cfg_lib.validate(config)


C4_DC5_YAMLS = [
    (f"{d}/{kind}_rcnn_R_50_{arch}_{sched}.yaml", arch, kind == "mask", sched)
    for kind, d in (("faster", "COCO-Detection"), ("mask", "COCO-InstanceSegmentation"))
    for arch in ("C4", "DC5")
    for sched in ("1x", "3x")
]


@pytest.mark.parametrize("yml, arch, mask_on, sched", C4_DC5_YAMLS)
def test_c4_dc5_zoo_yamls_equal_our_config_files(yml, arch, mask_on, sched):
    """Base-RCNN-C4 / Base-RCNN-DilatedC5 semantics, and configs/*.py reproduce them."""
    config = cfg_lib.from_detectron2(ZOO / yml)
    m = config.model
    assert cfg_lib.layout(config) == arch and m.mask_on is mask_on
    assert "fpn" not in m and m.backbone.name == "build_resnet_backbone"
    assert m.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    topk = (m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train)
    assert topk + (m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test) == (12000, 2000, 6000, 1000)
    assert config.input.size_divisibility == 0
    if arch == "C4":
        assert m.resnets.out_features == m.rpn.in_features == ("res4",)
        assert m.roi_heads.name == "Res5ROIHeads" and m.roi_box_head.pooler_resolution == 14
        assert "fc_dim" not in m.roi_box_head and "pooler_type" not in m.roi_mask_head
    else:
        assert m.resnets.out_features == m.rpn.in_features == ("res5",)
        assert m.resnets.res5_dilation == 2 and m.roi_heads.name == "StandardROIHeads"
        assert m.roi_box_head.num_fc == 2 and m.roi_box_head.pooler_resolution == 7
        assert m.roi_mask_head.num_conv == 4
    assert config.solver.max_iter == (90000 if sched == "1x" else 270000)

    py = f"configs/{Path(yml).stem}.py"
    ours = cfg_lib.to_flat_dict(cfg_lib.load_config(py))
    d2 = cfg_lib.to_flat_dict(config)
    assert set(ours) == set(d2)
    diff = {k: (ours[k], d2[k]) for k in ours if ours[k] != d2[k]}
    suffix = "_panoptic_separated" if "Panoptic" in yml else ""
    assert diff == {
        "input.pad_mode": ("buckets", "size_divisibility"),
        "input.auto_buckets": (False, True),
        "data.train.name": ("", f"coco_2017_train{suffix}"),
        "data.test.name": ("", f"coco_2017_val{suffix}"),
        "input.mask_format": ("bitmask", "polygon"),
        "model.weights": ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
    }


def test_base_chain(tmp_path):
    (tmp_path / "a").mkdir()
    _write(
        tmp_path, f'_BASE_: "{BASE_YAML}"\nSOLVER:\n  MAX_ITER: 1000\n  STEPS: (500,)\n', "mid.yaml"
    )
    leaf = _write(tmp_path / "a", '_BASE_: "../mid.yaml"\nSOLVER:\n  MAX_ITER: 2000\n', "leaf.yaml")
    config = cfg_lib.from_detectron2(leaf)
    assert config.solver.max_iter == 2000  # the leaf wins
    assert config.solver.steps == (500,)  # from the middle file
    assert config.model.rpn.in_features == ("p2", "p3", "p4", "p5", "p6")  # from the root

    missing = _write(tmp_path, '_BASE_: "nowhere.yaml"\n', "missing.yaml")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        cfg_lib.from_detectron2(missing)
    _write(tmp_path, '_BASE_: "cycle_b.yaml"\n', "cycle_a.yaml")
    _write(tmp_path, '_BASE_: "cycle_a.yaml"\n', "cycle_b.yaml")
    with pytest.raises(ValueError, match="cycle"):
        cfg_lib.from_detectron2(tmp_path / "cycle_a.yaml")
    url = _write(tmp_path, '_BASE_: "https://example.com/x.yaml"\n', "url.yaml")
    with pytest.raises(ValueError, match="URL"):
        cfg_lib.from_detectron2(url)


def test_invalid_result_names_our_key_and_detectron2_key(tmp_path):
    path = _override(tmp_path, "SOLVER:\n  STEPS: (80000, 60000)\n")
    with pytest.raises(ValueError, match=r"config\.solver\.steps \[SOLVER\.STEPS\]"):
        cfg_lib.from_detectron2(path)
    path = _override(tmp_path, "MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[32], [64]]\n")
    with pytest.raises(ValueError, match=r"\[MODEL\.ANCHOR_GENERATOR\.SIZES\]"):
        cfg_lib.from_detectron2(path)
    path = _override(tmp_path, "INPUT:\n  RANDOM_FLIP: vertical\n")
    with pytest.raises(ValueError, match=r"config\.input\.random_flip \[INPUT\.RANDOM_FLIP\]"):
        cfg_lib.from_detectron2(path)


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"model.resnets.depth": 42}, "model.resnets.depth"),
        ({"model.resnets.depth": 18}, "model.resnets.res2_out_channels"),
        (
            {"model.resnets.depth": 34, "model.resnets.res2_out_channels": 64},
            None,  # valid: Detectron2's R34 rule satisfied
        ),
        (
            {
                "model.resnets.depth": 34,
                "model.resnets.res2_out_channels": 64,
                "model.resnets.res5_dilation": 2,
            },
            "model.resnets.res5_dilation",
        ),
        ({"model.resnets.norm": "LN"}, "model.resnets.norm"),
        ({"model.fpn.norm": "LN"}, "model.fpn.norm"),
        ({"model.resnets.width_per_group": 0}, "model.resnets.width_per_group"),
        ({"model.fpn.out_channels": 0}, "model.fpn.out_channels"),
        ({"model.fpn.in_features": ("res2", "res4")}, "model.fpn.in_features"),
        ({"model.kernels": "triton"}, "model.kernels"),
        ({"model.anchor_generator.sizes": ((32,), (64,), (128,))}, "model.anchor_generator.sizes"),
        ({"model.anchor_generator.sizes": ((32,),)}, None),  # one entry: broadcast to all levels
        (
            {"model.anchor_generator.aspect_ratios": ((0.5,), (1.0,))},
            "model.anchor_generator.aspect_ratios",
        ),
        (
            {"model.anchor_generator.sizes": ((32,), (64, 90), (128,), (256,), (512,))},
            "model.anchor_generator.sizes",
        ),
        ({"model.rpn.in_features": ("p2", "p7")}, "model.rpn.in_features"),
        ({"model.rpn.iou_labels": (0, 1)}, "model.rpn.iou_labels"),
        ({"model.rpn.iou_labels": (0, 2, 1)}, "model.rpn.iou_labels"),
        ({"model.rpn.iou_thresholds": (0.0, 0.7)}, "model.rpn.iou_thresholds"),
        ({"model.rpn.iou_thresholds": (0.7, 0.3)}, "model.rpn.iou_thresholds"),
        ({"model.roi_heads.iou_thresholds": (1.5,)}, "model.roi_heads.iou_thresholds"),
        ({"model.rpn.positive_fraction": 0.0}, "model.rpn.positive_fraction"),
        ({"model.roi_heads.positive_fraction": 1.5}, "model.roi_heads.positive_fraction"),
        ({"model.rpn.positive_fraction": 1.0}, None),
        ({"model.rpn.nms_thresh": 1.5}, "model.rpn.nms_thresh"),
        ({"model.roi_heads.score_thresh_test": -0.1}, "model.roi_heads.score_thresh_test"),
        ({"model.rpn.post_nms_topk_test": 5001}, "model.rpn.post_nms_topk_test"),
        ({"model.rpn.post_nms_topk_train": 10000}, None),  # = 2000 x 5 levels
        ({"model.rpn.pre_nms_topk_train": 0}, "model.rpn.pre_nms_topk_train"),
        ({"model.roi_heads.num_classes": 0}, "model.roi_heads.num_classes"),
        ({"model.roi_box_head.pooler_type": "ROIAlignRotated"}, "model.roi_box_head.pooler_type"),
        ({"model.roi_box_head.num_fc": 0}, "model.roi_box_head.num_fc"),
        ({"model.roi_mask_head.conv_dim": 0}, "model.roi_mask_head.conv_dim"),
        ({"data.class_names": ("a", "b")}, "data.class_names"),
        ({"input.pad_mode": "dynamic"}, "input.pad_mode"),
        ({"input.buckets": ((800, 1333), (1333, 800))}, "input.buckets"),  # not multiples of 32
        ({"input.buckets": ((800, 1344),)}, "input.buckets"),  # no portrait bucket
        ({"input.buckets": ((1344, 1344),)}, None),  # one square bucket holds both
        ({"input.min_size_train": (640, 1024)}, "input.buckets"),  # train sizes do not fit
        (
            {"input.pad_mode": "size_divisibility", "input.buckets": ((1, 1),)},
            "input.buckets",  # buckets are unused when padding like Detectron2: an error
        ),
        ({"input.max_buckets": 0, "input.auto_buckets": True}, "input.max_buckets"),
        ({"input.max_buckets": 6}, "input.max_buckets"),  # no effect without auto_buckets
        ({"input.auto_buckets": True, "input.min_size_train": (640, 1024)}, None),
        ({"data.train.json": "a.json", "data.source": "shapes"}, "data.train.json"),
        ({"data.test.images": "im/", "data.source": "tfds"}, "data.test.images"),
        ({"data.shapes.num_train": 5}, "data.shapes.num_train"),  # source is "coco"
        ({"data.tfds_name": "voc", "data.source": "shapes"}, "data.tfds_name"),
        ({"data.cache_dir": "/tmp/c"}, "data.cache_dir"),
        ({"data.train.name": "coco_2017_train", "data.source": "shapes"}, None),  # a label
        ({"data.source": "shapes", "data.shapes.num_classes": 9}, "data.shapes.num_classes"),
        ({"data.source": "shapes", "data.shapes.image_size_range": (5, 4)}, "data.shapes"),
        ({"data.source": "shapes", "data.shapes.image_size_range": (256, 400)}, None),
        ({"model.mask_on": False, "model.roi_mask_head.num_sampled_masks": 8}, "model.roi_"),
        ({"solver.base_lr_end": 0.001}, "solver.base_lr_end"),  # multistep ignores it
        ({"solver.base_lr_end": 0.001, "solver.lr_scheduler_name": "WarmupCosineLR"}, None),
        ({"input.size_divisibility": 16}, "input.size_divisibility"),
        ({"input.min_size_test": 0}, "input.min_size_test"),
        ({"input.min_size_train": ()}, "input.min_size_train"),
        ({"input.min_size_train_sampling": "range"}, "input.min_size_train"),
        ({"input.random_flip": "diagonal"}, "input.random_flip"),
        ({"input.format": "YUV"}, "input.format"),
        ({"solver.steps": (80000, 60000)}, "solver.steps"),
        ({"solver.steps": (60000, 95000)}, None),  # ignored with a warning (Detectron2)
        ({"solver.steps": ()}, None),
        ({"solver.ims_per_batch": 0}, "solver.ims_per_batch"),
        ({"solver.momentum": 1.0}, "solver.momentum"),
        ({"solver.lr_scheduler_name": "WarmupPolyLR"}, "solver.lr_scheduler_name"),
        ({"solver.lr_scheduler_name": "WarmupCosineLR"}, None),
        (
            {"solver.base_lr_end": 0.5, "solver.lr_scheduler_name": "WarmupCosineLR"},
            "solver.base_lr_end",  # above base_lr 0.02
        ),
        ({"model.roi_mask_head.num_sampled_masks": -1}, "model.roi_mask_head.num_sampled_masks"),
        ({"solver.warmup_method": "exp"}, "solver.warmup_method"),
        ({"solver.clip_gradients.clip_type": "full_model"}, "solver.clip_gradients.clip_type"),
        ({"train.compute_dtype": "float16"}, "train.compute_dtype"),
        ({"test.detections_per_image": 0}, "test.detections_per_image"),
        ({"dataloader.num_workers": -1}, "dataloader.num_workers"),
    ],
)
def test_validate(changes, key):
    config = cfg_lib.load_config("configs/mask_rcnn_R_50_FPN_1x.py")
    for dotted, value in changes.items():
        _set(config, dotted, value)
    if key is None:
        cfg_lib.validate(config)
        return
    with pytest.raises(ValueError) as info:
        cfg_lib.validate(config)
    assert f"config.{key}" in str(info.value)


def test_no_effect_error_names_both_keys():
    config = cfg_lib.load_config("configs/quickstart.py")
    config.data.train.json = "mine.json"
    with pytest.raises(ValueError) as info:
        cfg_lib.validate(config)
    message = str(info.value)
    assert "config.data.train.json = 'mine.json'" in message
    assert "config.data.source = 'shapes'" in message


def test_steps_beyond_max_iter_warn_and_are_ignored(caplog):
    config = cfg_lib.load_config("configs/quickstart.py")
    config.solver.max_iter = 8
    with caplog.at_level("WARNING", logger="jax_rcnn.config"):
        cfg_lib.validate(config)
    assert "config.solver.steps" in caplog.text and ">= config.solver.max_iter = 8" in caplog.text
    from jax_rcnn.training import optim

    # The schedule drops those steps (Detectron2's build_lr_scheduler): the LR never decays.
    config.solver.warmup_iters = 0
    sched = optim.build_lr_schedule(config)
    assert float(sched(7)) == pytest.approx(config.solver.base_lr)


def test_validate_smoke_buckets():
    config = cfg_lib.load_config("configs/mask_rcnn_R_50_FPN_1x.py:smoke")
    cfg_lib.validate(config)
    config.input.max_size_test = 200
    with pytest.raises(ValueError, match=r"config\.input\.buckets = .*test image of up to"):
        cfg_lib.validate(config)


def test_validate_reports_every_problem():
    config = cfg_lib.load_config("configs/faster_rcnn_R_50_FPN_1x.py")
    config.model.kernels = "x"
    config.solver.ims_per_batch = 0
    with pytest.raises(ValueError) as info:
        cfg_lib.validate(config)
    assert "config.model.kernels" in str(info.value)
    assert "config.solver.ims_per_batch" in str(info.value)


def test_resized_shape_matches_detectron2():
    table = np.load(DATA / "geometry.npz")["resize_shape_table"]
    for h, w, short, longest, new_h, new_w in table.tolist():
        assert cfg_lib.resized_shape(h, w, short, longest) == (new_h, new_w)


@pytest.mark.parametrize("short, longest", [(800, 1333), (640, 1000), (128, 160), (900, 800)])
def test_largest_resized_shapes_bound_every_image(short, longest):
    landscape, portrait = cfg_lib.largest_resized_shapes(short, longest)
    rng = random.Random(0)
    sizes = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(3000)]
    sizes += [(1, 4000), (4000, 1), (500, 500), (short, longest), (longest, short)]
    for h, w in sizes:
        nh, nw = cfg_lib.resized_shape(h, w, short, longest)
        bound = landscape if h < w else portrait
        assert nh <= bound[0] and nw <= bound[1], (h, w, nh, nw)
    # The bounds are tight: exact-ratio images reach them.
    exact = cfg_lib.resized_shape(min(short, longest), longest, short, longest)
    assert exact == landscape


def test_weight_decay_bias_is_mapped(tmp_path):
    config = cfg_lib.from_detectron2(_override(tmp_path, "SOLVER:\n  WEIGHT_DECAY_BIAS: 0.0\n"))
    assert config.solver.weight_decay_bias == 0.0
    assert cfg_lib.from_detectron2(BASE_YAML).solver.weight_decay_bias is None


def test_cosine_schedule_is_mapped(tmp_path):
    text = "SOLVER:\n  LR_SCHEDULER_NAME: WarmupCosineLR\n  BASE_LR_END: 0.001\n"
    config = cfg_lib.from_detectron2(_override(tmp_path, text))
    assert config.solver.lr_scheduler_name == "WarmupCosineLR"
    assert config.solver.base_lr_end == 0.001


# ---------------------------------------------------------------------------------------------
# Cascade R-CNN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", ["1x", "3x"])
def test_cascade_zoo_yamls_equal_our_config_files(sched):
    """`Misc/cascade_mask_rcnn_R_50_FPN_{1x,3x}.yaml`: CascadeROIHeads with Detectron2's
    default ROI_BOX_CASCADE_HEAD, agnostic boxes, 2000 training proposals."""
    yml = f"Misc/cascade_mask_rcnn_R_50_FPN_{sched}.yaml"
    config = cfg_lib.from_detectron2(ZOO / yml)
    m = config.model
    assert m.roi_heads.name == "CascadeROIHeads" and m.mask_on
    assert m.roi_box_cascade_head.ious == (0.5, 0.6, 0.7)
    assert m.roi_box_cascade_head.bbox_reg_weights == (
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    )
    assert m.roi_box_head.cls_agnostic_bbox_reg and m.rpn.post_nms_topk_train == 2000
    assert config.solver.max_iter == (90000 if sched == "1x" else 270000)

    ours = cfg_lib.to_flat_dict(cfg_lib.load_config(f"configs/{Path(yml).stem}.py"))
    d2 = cfg_lib.to_flat_dict(config)
    assert set(ours) == set(d2)
    diff = {k: (ours[k], d2[k]) for k in ours if ours[k] != d2[k]}
    suffix = "_panoptic_separated" if "Panoptic" in yml else ""
    assert diff == {
        "input.pad_mode": ("buckets", "size_divisibility"),
        "input.auto_buckets": (False, True),
        "data.train.name": ("", f"coco_2017_train{suffix}"),
        "data.test.name": ("", f"coco_2017_val{suffix}"),
        "input.mask_format": ("bitmask", "polygon"),
        "model.weights": ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
    }


# ---------------------------------------------------------------------------------------------
# Keypoint R-CNN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", ["1x", "3x"])
def test_keypoint_zoo_yamls_equal_our_config_files(sched):
    """`COCO-Keypoints/keypoint_rcnn_R_50_FPN_{1x,3x}.yaml`: KEYPOINT_ON, 1 class, box beta 0.5,
    1500 training proposals, Detectron2's default ROI_KEYPOINT_HEAD."""
    yml = f"COCO-Keypoints/keypoint_rcnn_R_50_FPN_{sched}.yaml"
    config = cfg_lib.from_detectron2(ZOO / yml)
    m = config.model
    assert m.keypoint_on and not m.mask_on and m.roi_heads.num_classes == 1
    assert m.roi_keypoint_head.conv_dims == (512,) * 8
    assert m.roi_keypoint_head.num_keypoints == 17
    assert m.roi_box_head.smooth_l1_beta == 0.5 and m.rpn.post_nms_topk_train == 1500
    assert config.test.keypoint_oks_sigmas == ()
    assert config.solver.max_iter == (90000 if sched == "1x" else 270000)

    ours = cfg_lib.to_flat_dict(cfg_lib.load_config(f"configs/{Path(yml).stem}.py"))
    d2 = cfg_lib.to_flat_dict(config)
    assert set(ours) == set(d2)
    diff = {k: (ours[k], d2[k]) for k in ours if ours[k] != d2[k]}
    assert diff == {
        "input.pad_mode": ("buckets", "size_divisibility"),
        "input.auto_buckets": (False, True),
        "data.train.name": ("", "keypoints_coco_2017_train"),
        "data.test.name": ("", "keypoints_coco_2017_val"),
        "input.mask_format": ("bitmask", "polygon"),
        "model.weights": ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
    }


@pytest.mark.parametrize(
    "text, key",
    [
        ("    NUM_KEYPOINTS: 0\n", "model.roi_keypoint_head.num_keypoints"),
        ("    CONV_DIMS: []\n", "model.roi_keypoint_head.conv_dims"),
        ("    POOLER_TYPE: ROIAlignV3\n", "model.roi_keypoint_head.pooler_type"),
    ],
)
def test_bad_keypoint_head_values_are_rejected_by_name(tmp_path, text, key):
    path = _override(tmp_path, "MODEL:\n  KEYPOINT_ON: true\n  ROI_KEYPOINT_HEAD:\n" + text)
    with pytest.raises(ValueError, match=re.escape(key)):
        cfg_lib.from_detectron2(path)


def test_keypoint_oks_sigmas_need_one_per_keypoint(tmp_path):
    path = _override(tmp_path, "MODEL:\n  KEYPOINT_ON: true\nTEST:\n  KEYPOINT_OKS_SIGMAS: [0.1]\n")
    with pytest.raises(ValueError, match=r"test\.keypoint_oks_sigmas"):
        cfg_lib.from_detectron2(path)


def test_cascade_two_and_four_stages_from_yaml(tmp_path):
    path = _override(
        tmp_path,
        "MODEL:\n  ROI_HEADS:\n    NAME: CascadeROIHeads\n  ROI_BOX_HEAD:\n"
        "    CLS_AGNOSTIC_BBOX_REG: True\n  ROI_BOX_CASCADE_HEAD:\n"
        "    IOUS: [0.5, 0.6, 0.7, 0.75]\n"
        "    BBOX_REG_WEIGHTS: [[10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15], "
        "[40, 40, 20, 20]]\n",
    )
    assert len(cfg_lib.from_detectron2(path).model.roi_box_cascade_head.ious) == 4
    config = cfg_lib.load_config("configs/cascade_mask_rcnn_R_50_FPN_1x.py")
    with config.unlocked():
        config.model.roi_box_cascade_head.ious = (0.5, 0.6)
        config.model.roi_box_cascade_head.bbox_reg_weights = ((10, 10, 5, 5), (20, 20, 10, 10))
    cfg_lib.validate(config)


def test_cascade_stage_count_mismatch_is_an_error_naming_the_key(tmp_path):
    config = cfg_lib.load_config("configs/cascade_mask_rcnn_R_50_FPN_1x.py")
    with config.unlocked():
        config.model.roi_box_cascade_head.ious = (0.5, 0.6)
    with pytest.raises(
        ValueError, match=r"config.model.roi_box_cascade_head.bbox_reg_weights = .*2 stages"
    ):
        cfg_lib.validate(config)
    path = _override(
        tmp_path,
        "MODEL:\n  ROI_HEADS:\n    NAME: CascadeROIHeads\n  ROI_BOX_HEAD:\n"
        "    CLS_AGNOSTIC_BBOX_REG: True\n  ROI_BOX_CASCADE_HEAD:\n    IOUS: [0.5, 0.6]\n",
    )
    with pytest.raises(ValueError, match=r"MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS\]"):
        cfg_lib.from_detectron2(path)


def test_cascade_needs_agnostic_boxes_and_the_roi_heads_iou():
    config = cfg_lib.load_config("configs/cascade_mask_rcnn_R_50_FPN_1x.py")
    with config.unlocked():
        config.model.roi_box_head.cls_agnostic_bbox_reg = False
        config.model.roi_heads.iou_thresholds = (0.4,)
    with pytest.raises(ValueError) as info:
        cfg_lib.validate(config)
    text = str(info.value)
    assert "config.model.roi_box_head.cls_agnostic_bbox_reg = False" in text
    assert "config.model.roi_box_cascade_head.ious" in text


def test_box_regression_loss_types_are_imported_from_yaml(tmp_path):
    """`BBOX_REG_LOSS_TYPE` of the RPN, box head and RetinaNet (all four of Detectron2's values)
    and `BBOX_REG_LOSS_WEIGHT` reach the stages' config keys."""
    text = (
        "MODEL:\n  RPN:\n    BBOX_REG_LOSS_TYPE: giou\n    BBOX_REG_LOSS_WEIGHT: 2.0\n"
        "  ROI_BOX_HEAD:\n    BBOX_REG_LOSS_TYPE: ciou\n    BBOX_REG_LOSS_WEIGHT: 10.0\n"
    )
    config = cfg_lib.from_detectron2(_override(tmp_path, text))
    assert (config.model.rpn.bbox_reg_loss_type, config.model.rpn.bbox_reg_loss_weight) == (
        "giou",
        2.0,
    )
    assert config.model.roi_box_head.bbox_reg_loss_type == "ciou"
    assert config.model.roi_box_head.bbox_reg_loss_weight == 10.0
    base = ZOO / "Base-RetinaNet.yaml"
    retina = f'_BASE_: "{base}"\nMODEL:\n  RETINANET:\n    BBOX_REG_LOSS_TYPE: diou\n'
    config = cfg_lib.from_detectron2(_write(tmp_path, retina, "r.yaml"))
    assert config.model.retinanet.bbox_reg_loss_type == "diou"


def test_repeat_factor_sampler_is_imported(tmp_path):
    text = (
        "DATALOADER:\n  SAMPLER_TRAIN: RepeatFactorTrainingSampler\n"
        "  REPEAT_THRESHOLD: 0.001\n  REPEAT_SQRT: false\n"
    )
    config = cfg_lib.from_detectron2(_override(tmp_path, text))
    assert config.dataloader.sampler_train == "RepeatFactorTrainingSampler"
    assert config.dataloader.repeat_threshold == 0.001
    assert config.dataloader.repeat_sqrt is False


def test_other_samplers_are_rejected_by_name(tmp_path):
    text = "DATALOADER:\n  SAMPLER_TRAIN: RandomSubsetTrainingSampler\n"
    with pytest.raises(ValueError, match="DATALOADER.SAMPLER_TRAIN.*RandomSubset.*RepeatFactor"):
        cfg_lib.from_detectron2(_override(tmp_path, text))


def test_repeat_factor_sampler_needs_a_positive_threshold(tmp_path):
    text = "DATALOADER:\n  SAMPLER_TRAIN: RepeatFactorTrainingSampler\n"  # threshold 0.0
    with pytest.raises(ValueError, match="dataloader.repeat_threshold"):
        cfg_lib.from_detectron2(_override(tmp_path, text))


def test_train_samplers_match_the_loader():
    from jax_rcnn.data import samplers

    assert cfg_lib.TRAIN_SAMPLERS == samplers.SAMPLERS


@pytest.mark.parametrize(
    "py, yml",
    [
        (
            "configs/lvis_v0_5_mask_rcnn_R_50_FPN_1x.py",
            "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        ),
        (
            "configs/lvis_v1_mask_rcnn_R_50_FPN_1x.py",
            "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        ),
    ],
)
def test_lvis_zoo_yaml_equals_our_config_file(py, yml):
    ours = cfg_lib.to_flat_dict(cfg_lib.load_config(py))
    d2 = cfg_lib.to_flat_dict(cfg_lib.from_detectron2(ZOO / yml))
    assert set(ours) == set(d2)
    diff = {k: (ours[k], d2[k]) for k in ours if ours[k] != d2[k]}
    assert diff == {
        "input.pad_mode": ("buckets", "size_divisibility"),
        "input.auto_buckets": (False, True),
        "input.mask_format": ("bitmask", "polygon"),
        "model.weights": ("", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"),
    }
    assert d2["dataloader.sampler_train"] == "RepeatFactorTrainingSampler"
    assert d2["dataloader.repeat_threshold"] == 0.001
    assert d2["test.detections_per_image"] == 300
    assert d2["data.test.name"].startswith("lvis_v")
