"""The research recipes (`docs/research.md`) and a user-defined sampler, trained a few steps
through `train.py` (slow: one `train.py` run each)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

USER_SAMPLER = '''
import pathlib

from jax_rcnn import sampling


def sample(key, labels, quality, hardness, *, num_samples, positive_fraction, bg_label):
    """All positives (up to num_samples), then random negatives: positive_fraction ignored."""
    pathlib.Path("sampler_traced.txt").write_text(f"{labels.shape[0]} {num_samples} {bg_label}")
    return sampling.subsample_labels(key, labels, num_samples, 1.0, bg_label=bg_label)
'''


def _train_py(cwd, workdir, *args):
    cmd = [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _final_metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "extra"),
    [
        # The RPN's IoU-loss path rides along (no extra train.py run).
        ("quickstart.py:giou_smoke", ["--config.model.rpn.bbox_reg_loss_type=diou"]),
        ("quickstart.py:soft_nms_smoke", []),
        ("quickstart.py:ohem_smoke", []),
        ("quickstart.py:libra_smoke", []),
        (
            "quickstart_retinanet.py:atss_smoke",
            ["--config.model.retinanet.bbox_reg_loss_type=ciou"],
        ),
    ],
)
def test_recipe_trains_and_evaluates(tmp_path, variant, extra):
    proc = _train_py(ROOT, tmp_path / "w", f"--config=configs/{variant}", *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _final_metrics(tmp_path / "w")
    losses = [r for r in rows if any(k.startswith("loss_") for k in r)]
    assert losses and all(
        v == v and abs(v) < 1e6 for r in losses for k, v in r.items() if k.startswith("loss_")
    )
    assert any("bbox/AP" in r for r in rows), "the final evaluation ran"


@pytest.mark.slow
def test_user_sampler_file_selected_by_config_override(tmp_path):
    """`my_sampler.py:sample` outside the package, relative to the working directory, chosen by
    `--config` alone: it is traced into the train step (the marker file) and training runs."""
    (tmp_path / "my_sampler.py").write_text(USER_SAMPLER)
    proc = _train_py(
        tmp_path,
        tmp_path / "w",
        f"--config={ROOT / 'configs' / 'quickstart.py'}:smoke",
        "--config.model.roi_heads.sampler=my_sampler.py:sample",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # 256 training proposals + 16 gt appended; 128 ROIs per image; background class 8.
    assert (tmp_path / "sampler_traced.txt").read_text() == "272 128 8"


def test_wrong_user_sampler_fails_before_compiling(tmp_path):
    (tmp_path / "my_sampler.py").write_text("def sample(key, labels):\n    return labels\n")
    proc = _train_py(
        tmp_path,
        tmp_path / "w",
        f"--config={ROOT / 'configs' / 'quickstart.py'}:smoke",
        "--config.model.roi_heads.sampler=my_sampler.py:sample",
    )
    assert proc.returncode != 0
    assert "config.model.roi_heads.sampler = 'my_sampler.py:sample'" in proc.stderr
    assert "jax_rcnn.research.Sampler" in proc.stderr
    assert "XLA compilation" not in proc.stderr and not (tmp_path / "w" / "checkpoints").exists()
