"""train.py with a Detectron2 YAML: translated, overridable, checked before anything compiles."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPE = "tests/data/recipes/d2_scratch_gn_mask_rcnn.yaml"


def _train_py(tmp_path, *args):
    cmd = [sys.executable, str(ROOT / "train.py"), f"--workdir={tmp_path / 'w'}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_yaml_path_is_rewritten_to_the_wrapper_config():
    import train

    wrapper = str(ROOT / "configs" / "detectron2_yaml.py")
    for argv in (["--config", "r.yaml", "--x"], ["--config=r.yaml", "--x"]):
        assert train._yaml_to_config_file(["t", *argv]) == [
            "t",
            f"--config={wrapper}:r.yaml",
            "--x",
        ]
    assert train._yaml_to_config_file(["t", "--config=c.py:smoke"]) == ["t", "--config=c.py:smoke"]


def test_wrapper_translates_the_recipe():
    from configs import detectron2_yaml

    config = detectron2_yaml.get_config(str(ROOT / RECIPE))
    assert config.model.roi_heads.num_classes == 6 and config.solver.max_iter == 700
    assert config.input.auto_buckets and config.input.pad_mode == "size_divisibility"
    assert (config.data.train.name, config.data.test.name) == ("my_dataset_train", "my_dataset_val")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # A path for a source that does not read it: an error naming both keys.
        (
            ["--config.data.source=shapes", "--config.data.train.json=x.json"],
            "config.data.train.json = 'x.json': has no effect with config.data.source = 'shapes'",
        ),
        # A misspelt override of the translated config.
        (["--config.solver.max_iters=8"], "max_iters"),
        # The recipe's own dataset names are not builtin: the paths are needed (named).
        (
            ["--config.solver.max_iter=8", "--eval_only"],
            "for your own dataset set config.data.test.json and config.data.test.images",
        ),
    ],
)
def test_yaml_recipe_errors_before_compiling(tmp_path, args, message):
    proc = _train_py(tmp_path, f"--config={RECIPE}", *args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "XLA compilation" not in proc.stderr
