"""`train.py` on the long-tailed quickstart with the repeat-factor sampler and LVIS evaluation."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_long_tail_quickstart_trains_with_rfs_and_fed_loss_and_evaluates_lvis_ap(tmp_path):
    """The repeat-factor sampler, the sigmoid / federated loss (its class image counts filled
    from the LVIS json) and LVIS AP through `train.py`."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/quickstart_lvis.py:rfs_fed_loss_smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.model.roi_heads.score_thresh_test=0.0",  # an untrained model's detections
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RepeatFactorTrainingSampler: threshold 0.1" in proc.stderr
    with open(tmp_path / "w" / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2, 3]
    assert all(math.isfinite(m["total_loss"]) for m in losses)
    final = metrics[-1]
    for task in ("bbox", "segm"):
        assert {f"{task}/AP", f"{task}/APr", f"{task}/APc", f"{task}/APf"} <= set(final)
    config_txt = (tmp_path / "w" / "config.txt").read_text()
    assert "fed_loss_image_counts" in config_txt and "use_fed_loss: True" in config_txt
    results = json.loads((tmp_path / "w" / "inference" / "lvis_instances_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(range(1, 7))
