"""The training loop: metrics.jsonl, resume == uninterrupted, SIGTERM, NaN stop, train.py."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from jax_rcnn.training import checkpointing, loop
from tests.jax_rcnn.training.conftest import FakeLoader, make_stub_loss, tiny_params

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _configure(config, max_iter=4):
    config.solver.max_iter = max_iter
    config.solver.steps = (3,)
    config.solver.checkpoint_period = 2
    config.log_period = 1
    config.test.eval_period = 0
    return config


def _read_metrics(workdir):
    with open(os.path.join(workdir, loop.METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def _train(config, workdir, loader):
    return loop.train(
        config,
        workdir,
        loss_fn=make_stub_loss(),
        train_loader=loader,
        variables={"params": tiny_params()},
        final_eval=False,
    )


def test_resume_after_sigterm_reproduces_uninterrupted_run(tmp_path, smoke_config):
    config = _configure(smoke_config)
    state = _train(config, tmp_path / "a", FakeLoader())
    assert int(state.step) == 4
    full = _read_metrics(tmp_path / "a")
    assert [m["iteration"] for m in full] == [0, 1, 2, 3]
    assert set(full[0]) >= {"iteration", "total_loss", "loss_a", "loss_b", "lr", "time"}
    assert os.listdir(tmp_path / "a" / "tb")  # TensorBoard events

    def sigterm_at_2(position):
        if position == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    state = _train(config, tmp_path / "b", FakeLoader(on_batch=sigterm_at_2))
    assert int(state.step) == 3  # the step in flight finished, then saved, then stopped
    assert checkpointing.Checkpointer(tmp_path / "b", config).all_steps() == [2, 3]
    state = _train(config, tmp_path / "b", FakeLoader())
    assert int(state.step) == 4
    resumed = _read_metrics(tmp_path / "b")
    assert [m["iteration"] for m in resumed] == [0, 1, 2, 3]
    for a, b in zip(full, resumed, strict=True):
        for k in ("total_loss", "loss_a", "loss_b", "lr"):
            assert a[k] == b[k], (a["iteration"], k)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, smoke_config):
    config = _configure(smoke_config, max_iter=6)
    with pytest.raises(FloatingPointError, match="iteration=3"):
        _train(config, tmp_path, FakeLoader(scales={3: float("nan")}))
    assert checkpointing.Checkpointer(tmp_path, config).all_steps() == [2]


def test_other_models_workdir_fails_before_compiling(tmp_path, smoke_config):
    config = _configure(smoke_config, max_iter=1)
    _train(config, tmp_path, FakeLoader())
    config.solver.max_iter = 2
    config.model.roi_heads.num_classes = 5

    def must_not_trace(*args):
        raise AssertionError("compiled before the checkpoint check")

    with pytest.raises(checkpointing.CheckpointMismatchError, match="num_classes"):
        loop.train(
            config,
            tmp_path,
            loss_fn=must_not_trace,
            train_loader=FakeLoader(),
            variables={"params": tiny_params()},
        )


def _train_py(workdir, cache, *overrides):
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/mask_rcnn_R_50_FPN_1x.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.cache_dir={cache}",
        "--config.data.shapes.num_train=8",
        "--config.data.shapes.num_val=4",
        "--config.solver.checkpoint_period=2",
        # The smoke network (FrozenBN from scratch) diverges at the smoke LR 0.01 by step 3.
        "--config.solver.base_lr=0.0001",
        *overrides,
    ]
    return cmd


@pytest.mark.slow
def test_train_py_two_steps(tmp_path):
    """The documented command line, two steps and an evaluation on the smoke config."""
    cmd = _train_py(
        tmp_path / "w",
        tmp_path / "cache",
        "--config.solver.max_iter=2",
        "--config.solver.steps=(1,)",
        "--config.test.eval_period=2",
    )
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = _read_metrics(tmp_path / "w")
    assert [m["iteration"] for m in metrics] == [0, 1, 1]
    for key in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"):
        assert key in metrics[1]
    assert {"bbox/AP", "bbox/AP50", "segm/AP"} <= set(metrics[2])
    assert (tmp_path / "w" / "predictions" / "iter_0000001.png").exists()
    assert checkpointing.Checkpointer(tmp_path / "w", loop_config()).all_steps() == [2]


@pytest.mark.slow
def test_train_py_final_eval_bucket_budget_and_second_run_compiles_nothing(tmp_path):
    """`test.eval_period = 0` still evaluates after the last iteration (Detectron2's
    `EvalHook.after_train`); auto buckets keep the train step within `input.max_buckets`
    programs (the smoke resize gives two shapes, the budget is one); a second identical run
    loads every program from the persistent cache."""
    overrides = (
        "--config.solver.max_iter=2",
        "--config.solver.steps=(1,)",
        "--config.test.eval_period=0",
        "--config.input.auto_buckets=True",
        "--config.input.max_buckets=1",
        f"--config.train.compilation_cache_dir={tmp_path / 'xla'}",
    )
    # Our own cache settings, not the test session's JAX cache (tests/conftest.py), which a
    # user-set JAX_COMPILATION_CACHE_DIR would take precedence over.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))
    }
    metrics = []
    for run in ("first", "second"):
        cmd = _train_py(tmp_path / run, tmp_path / "cache", *overrides)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "training buckets (H, W) [(128, 160)]: 1 programs" in proc.stderr
        metrics.append(_read_metrics(tmp_path / run))
    first, second = metrics
    assert [m["iteration"] for m in first] == [0, 1, 1]
    assert {"bbox/AP", "segm/AP", "eval_seconds"} <= set(first[-1])
    assert first[1]["train_step_programs"] == 1 and first[-1]["compiles"] > 0
    assert second[-1]["compiles"] == 0 and second[-1]["compile_cache_hits"] > 0


def loop_config():
    from jax_rcnn.config import load_config

    return load_config("configs/mask_rcnn_R_50_FPN_1x.py:smoke")


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, logged_before_signal, returncode",
    [
        # SIGTERM (preemption): a checkpoint is saved at the current step, exit code 0.
        (signal.SIGTERM, 1, 0),
        # kill -9 after iteration 2 was logged (the checkpoint of step 2 is written before
        # iteration 2 runs): at most the steps since that checkpoint are lost and redone.
        (signal.SIGKILL, 3, -signal.SIGKILL),
    ],
    ids=["sigterm", "kill-9"],
)
def test_train_py_signal_then_resume_matches_uninterrupted(
    tmp_path, sig, logged_before_signal, returncode
):
    """Real process, real signal: the resumed run logs the uninterrupted run's losses."""
    cache = tmp_path / "cache"
    full = subprocess.run(
        _train_py(
            tmp_path / "full", cache, "--config.solver.max_iter=4", "--config.solver.steps=(3,)"
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert full.returncode == 0, full.stderr[-4000:]
    cmd = _train_py(
        tmp_path / "cut", cache, "--config.solver.max_iter=4", "--config.solver.steps=(3,)"
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics_file = tmp_path / "cut" / loop.METRICS_FILE
    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None:
        if metrics_file.exists() and metrics_file.read_text().count("\n") >= logged_before_signal:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == returncode, err[-4000:]
    saved = checkpointing.Checkpointer(tmp_path / "cut", loop_config()).all_steps()
    assert saved and saved[-1] < 4
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # Loss records only: the evaluation after the last iteration is logged at iteration 3 too.
    want = {m["iteration"]: m for m in _read_metrics(tmp_path / "full") if "total_loss" in m}
    got = {}
    for m in _read_metrics(tmp_path / "cut"):
        if "total_loss" in m:
            got[m["iteration"]] = m  # a step redone after the cut is logged twice; keep the last
    assert sorted(got) == [0, 1, 2, 3]
    for it, m in want.items():
        for k in ("total_loss", "loss_rpn_cls", "loss_cls", "loss_mask", "lr"):
            assert got[it][k] == pytest.approx(m[k], rel=1e-6, abs=1e-7), (it, k)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["configs/quickstart.py:smoke", "configs/quickstart_c4.py:smoke"])
def test_quickstart_config_runs_end_to_end(tmp_path, spec):
    """The README's main command on the quickstarts' `:smoke` variants (4 steps, evaluation,
    picture): guards their own architectures (R18 res2-res4 with p2-only ROI pooling; the
    narrow R50-C4 with its 12 anchors on res4 and the BN res5 head)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={spec}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = _read_metrics(tmp_path / "w")
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2, 3]
    assert all(math.isfinite(m["total_loss"]) for m in losses)
    assert {"bbox/AP", "segm/AP"} <= set(metrics[-1])
    assert (tmp_path / "w" / "predictions" / "iter_0000003.png").exists()


@pytest.mark.slow
def test_quickstart_keypoint_runs_end_to_end(tmp_path):
    """`train.py` on `configs/quickstart_keypoint.py:smoke`: the built-in people dataset,
    keypoint loss, keypoint and box AP, a picture."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/quickstart_keypoint.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = _read_metrics(tmp_path / "w")
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2, 3]
    assert all(math.isfinite(m["loss_keypoint"]) for m in losses)
    assert {"bbox/AP", "keypoints/AP", "keypoints/AP50"} <= set(metrics[-1])
    assert "segm/AP" not in metrics[-1]
    assert (tmp_path / "w" / "predictions" / "iter_0000003.png").exists()


def test_global_loader_states_resume_on_another_process_count():
    from jax_rcnn.data.loader import STATE_VERSION

    plan = {"version": STATE_VERSION, "seed": 0, "num_records": 10, "ims_per_batch": 4}
    plan.update(batch=3, position=13, queues=[[0, [12]]])
    # Saved by two hosts (TrainLoader: the same global state on both), resumed by one.
    assert loop._this_process_data_state({"process_states": [plan, plan]}) == plan
    assert loop._this_process_data_state(plan) == plan
    # A custom loader's per-host states need the process count they were written with.
    custom = {"process_states": [{"offset": 1}, {"offset": 2}]}
    with pytest.raises(ValueError, match="written by 2 process.*this run has 1.*per host"):
        loop._this_process_data_state(custom)
    with pytest.raises(ValueError, match="per host"):
        loop._this_process_data_state({"process_states": [{"offset": 1}, {"offset": 1}]})
    assert loop._this_process_data_state({"offset": 1}) == {"offset": 1}


@pytest.mark.slow
def test_retinanet_trains_evaluates_and_resumes_exactly(tmp_path):
    """`train.py` on `configs/quickstart_retinanet.py:smoke`: losses, the EMA loss normaliser,
    COCO AP and a picture; a run stopped at step 2 and resumed logs the uninterrupted run's
    losses and normaliser (the normaliser is checkpointed with the train state)."""

    def cmd(workdir, *overrides):
        return [
            sys.executable,
            str(ROOT / "train.py"),
            "--config=configs/quickstart_retinanet.py:smoke",
            f"--workdir={workdir}",
            f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.solver.steps=()",
            *overrides,
        ]

    def run(*args):
        proc = subprocess.run(cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-4000:]

    run(tmp_path / "full")
    full = _read_metrics(tmp_path / "full")
    losses = {m["iteration"]: m for m in full if "total_loss" in m}
    assert sorted(losses) == [0, 1, 2, 3]
    assert {"loss_cls", "loss_box_reg", "loss_normalizer"} <= set(losses[0])
    assert "loss_rpn_cls" not in losses[0]
    # Detectron2's EMA from 100: the first step's normaliser is 90 + 0.1 * max(num_fg, 1).
    assert 90.1 <= losses[0]["loss_normalizer"] < losses[1]["loss_normalizer"] + 100
    assert {"bbox/AP", "bbox/AP50"} <= set(full[-1]) and "segm/AP" not in full[-1]
    assert (tmp_path / "full" / "predictions" / "iter_0000003.png").exists()

    run(tmp_path / "cut", "--config.solver.max_iter=2", "--config.test.eval_period=0")
    run(tmp_path / "cut")  # resumes from the step-2 checkpoint
    resumed = {m["iteration"]: m for m in _read_metrics(tmp_path / "cut") if "total_loss" in m}
    for it in (2, 3):
        for k in ("total_loss", "loss_cls", "loss_box_reg", "loss_normalizer", "lr"):
            assert resumed[it][k] == pytest.approx(losses[it][k], rel=1e-6), (it, k)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec", ["configs/rpn_R_50_FPN_1x.py:smoke", "configs/rpn_R_50_C4_1x.py:smoke"]
)
def test_proposal_network_trains_and_evaluates_box_proposal_recall(tmp_path, spec):
    """`train.py` on the RPN-only smoke configs (FPN, and C4: the RPN on res4): RPN losses only,
    then Detectron2's box-proposal AR under its metric names (`box_proposals/AR@100`, ...)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={spec}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.shapes.num_train=8",
        "--config.data.shapes.num_val=4",
        "--config.solver.max_iter=2",
        "--config.solver.steps=(1,)",
        "--config.solver.base_lr=0.0001",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = _read_metrics(tmp_path / "w")
    losses = [m for m in metrics if "total_loss" in m]
    assert losses and {"loss_rpn_cls", "loss_rpn_loc"} <= set(losses[0])
    assert "loss_cls" not in losses[0]
    final = metrics[-1]
    for limit in (100, 1000):
        for suffix in ("", "s", "m", "l"):
            key = f"box_proposals/AR{suffix}@{limit}"
            assert key not in final or 0.0 <= final[key] <= 100.0, key
    assert 0.0 <= final["box_proposals/AR@100"] <= final["box_proposals/AR@1000"] <= 100.0
    assert not any(k.startswith("bbox/") for k in final)
