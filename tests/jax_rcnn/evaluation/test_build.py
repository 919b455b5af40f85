"""`evaluation.build.build_evaluators`: the evaluator each kind of run gets (Detectron2's
`build_evaluator` choice), on tiny built-in datasets."""

from __future__ import annotations

import pytest

from configs import common
from jax_rcnn.config import load_config
from jax_rcnn.data.loader import dataset_records
from jax_rcnn.evaluation import COCOEvaluator, ProposalEvaluator
from jax_rcnn.evaluation.build import build_evaluators, gt_json
from jax_rcnn.evaluation.lvis_evaluation import LVISEvaluator
from jax_rcnn.evaluation.panoptic_evaluation import PanopticEvaluator, SemSegEvaluator


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _config(spec: str, cache: str, people: bool = False):
    config = load_config(spec)
    if people:
        with config.unlocked():
            common.people_data(config)
    config.data.cache_dir = cache
    sizes = config.data.people if people else config.data.shapes
    sizes.num_train, sizes.num_val = 2, 3
    return config


def _build(config, **kw):
    records, meta = dataset_records(config, "test")
    return build_evaluators(config, records, meta, **kw), records, meta


@pytest.mark.parametrize(
    "spec, tasks",
    [
        ("configs/mask_rcnn_R_50_FPN_1x.py:smoke", ("bbox", "segm")),
        ("configs/retinanet_R_50_FPN_1x.py:smoke", ("bbox",)),
        ("configs/faster_rcnn_R_50_C4_1x.py:smoke", ("bbox",)),
    ],
)
def test_coco_tasks_follow_the_heads(spec, tasks, cache):
    (evaluator, panoptic), _, meta = _build(_config(spec, cache))
    assert type(evaluator) is COCOEvaluator and panoptic is None
    assert evaluator._tasks == tasks
    assert gt_json(_config(spec, cache)) == meta["json_file"]


def test_keypoint_rcnn_adds_keypoints_with_the_oks_sigmas(cache):
    config = _config("configs/keypoint_rcnn_R_50_FPN_1x.py:smoke", cache, people=True)
    config.test.keypoint_oks_sigmas = tuple(0.01 * k for k in range(1, 18))
    (evaluator, _), _, _ = _build(config)
    assert type(evaluator) is COCOEvaluator and evaluator._tasks == ("bbox", "keypoints")
    assert evaluator._kpt_oks_sigmas == tuple(0.01 * k for k in range(1, 18))


def test_proposal_network_gets_box_proposal_recall(cache, tmp_path):
    config = _config("configs/rpn_R_50_FPN_1x.py:smoke", cache)
    (evaluator, panoptic), _, _ = _build(config, output_dir=str(tmp_path))
    assert type(evaluator) is ProposalEvaluator and panoptic is None
    assert evaluator._output_dir == str(tmp_path)


def test_lvis_data_gets_lvis_ap(cache):
    (evaluator, _), _, meta = _build(_config("configs/quickstart_lvis.py:smoke", cache))
    assert meta["format"] == "lvis"
    assert type(evaluator) is LVISEvaluator and evaluator._tasks == ("bbox", "segm")


def test_panoptic_fpn_adds_pq_in_single_process_runs_only(cache):
    config = _config("configs/panoptic_fpn_R_50_1x.py:smoke", cache)
    (evaluator, panoptic), records, meta = _build(config)
    assert type(evaluator) is COCOEvaluator and evaluator._tasks == ("bbox", "segm")
    assert type(panoptic) is PanopticEvaluator
    assert build_evaluators(config, records, meta, process_count=2)[1] is None


def test_semantic_segmentor_needs_semantic_ground_truth(cache):
    config = _config("configs/semantic_R_50_FPN_1x.py:smoke", cache)
    (evaluator, panoptic), records, meta = _build(config)
    assert type(evaluator) is SemSegEvaluator and panoptic is None
    stripped = [{k: v for k, v in r.items() if k != "sem_seg_file_name"} for r in records]
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        build_evaluators(config, stripped, meta)


def test_gt_json_needs_a_json_source(cache):
    config = _config("configs/mask_rcnn_R_50_FPN_1x.py:smoke", cache)
    config.data.source = "tfds"
    with pytest.raises(NotImplementedError, match="config.data.source='tfds'"):
        gt_json(config)
