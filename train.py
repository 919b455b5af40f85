r"""Train Faster / Mask R-CNN: Detectron2's `tools/train_net.py` for jax_rcnn.

    python train.py --config configs/mask_rcnn_R_50_FPN_1x.py --workdir work_dirs/r50_1x \
        --config.data.train.json=... --config.solver.base_lr=0.01
    python train.py --config configs/quickstart.py --workdir /tmp/quickstart
    python train.py --config configs/x.py --workdir DIR --eval_only   # evaluate DIR's latest

`--config path[:variant]` loads `get_config(variant)`; `--config recipe.yaml` translates a
Detectron2 YAML (`configs/detectron2_yaml.py`); `--config.a.b=value` overrides any key (the
config is locked: a misspelt key is an error). Re-running the same command resumes from
the newest checkpoint in `--workdir`. Outputs: `DIR/metrics.jsonl`, `DIR/tb/` (TensorBoard),
`DIR/checkpoints/`, `DIR/predictions/`, `DIR/inference/`. The library is `jax_rcnn.training`.
Every visible device is used; several hosts: the same command on each (docs/scaling.md).
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jax_rcnn import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config file, e.g. configs/mask_rcnn_R_50_FPN_1x.py:smoke", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, events)")
_EVAL_ONLY = flags.DEFINE_bool(
    "eval_only", False, "evaluate the work dir's latest checkpoint (or config.model.weights)"
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    None,
    ["auto", "on", "off"],
    "jax.distributed.initialize: 'auto' (default, or $JAX_RCNN_DISTRIBUTED) when "
    "JAX_COORDINATOR_ADDRESS, SLURM or a TPU pod says so (docs/scaling.md)",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    config = _CONFIG.value
    config_lib.validate(config)  # before anything is built or compiled
    logging.info("config:\n%s", config_lib.format_config(config))

    from jax_rcnn.training import distributed, loop  # imports jax; after config validation

    distributed.maybe_initialize_distributed(_DISTRIBUTED.value)

    if _EVAL_ONLY.value:
        loop.evaluate_only(config, _WORKDIR.value)
    else:
        loop.train(config, _WORKDIR.value)


def _yaml_to_config_file(argv: list[str]) -> list[str]:
    """`--config x.yaml` -> `--config=configs/detectron2_yaml.py:x.yaml` (config_flags: .py)."""
    wrapper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs/detectron2_yaml.py")
    out, i = [], 0
    while i < len(argv):
        a, nxt = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
        path = (
            a[len("--config=") :] if a.startswith("--config=") else nxt if a == "--config" else ""
        )
        if path.endswith((".yaml", ".yml")):
            out.append(f"--config={wrapper}:{path}")
            i += 2 if a == "--config" else 1
            continue
        out.append(a)
        i += 1
    return out


if __name__ == "__main__":
    app.run(main, argv=_yaml_to_config_file(sys.argv))
