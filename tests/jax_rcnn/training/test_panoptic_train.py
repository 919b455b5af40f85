"""`train.py` on the Panoptic FPN quickstart's `:smoke` variant: the semantic loss next to the
instance losses, and PQ / semantic metrics in the evaluation."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.slow  # ~1.5 min on 2 cores: dataset, one train-step and one eval compile
def test_quickstart_panoptic_smoke_trains_and_reports_pq(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/quickstart_panoptic.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(tmp_path / "w", "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2, 3]
    assert all(math.isfinite(m["loss_sem_seg"]) and m["loss_sem_seg"] > 0 for m in losses)
    assert {"loss_mask", "loss_rpn_cls"} <= set(losses[0])
    final = metrics[-1]
    for key in ("panoptic_seg/PQ", "panoptic_seg/PQ_th", "panoptic_seg/PQ_st", "sem_seg/mIoU"):
        assert 0.0 <= final[key] <= 100.0, key
    assert {"bbox/AP", "segm/AP"} <= set(final)


@pytest.mark.slow  # ~1 min on 2 cores
def test_semantic_segmentor_smoke_trains_and_reports_miou(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/semantic_R_50_FPN_1x.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.shapes.num_train=8",
        "--config.data.shapes.num_val=4",
        "--config.solver.max_iter=2",
        "--config.solver.steps=(1,)",
        "--config.test.eval_period=2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(tmp_path / "w", "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    losses = [m for m in metrics if "total_loss" in m]
    assert set(k for k in losses[0] if k.startswith("loss_")) == {"loss_sem_seg"}
    assert 0.0 <= metrics[-1]["sem_seg/mIoU"] <= 100.0
    assert "bbox/AP" not in metrics[-1]
