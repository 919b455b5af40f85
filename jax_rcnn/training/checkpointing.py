"""Training checkpoints: orbax `CheckpointManager` in `<workdir>/checkpoints`.

Each checkpoint `<workdir>/checkpoints/<step>/` holds four items:

* `state`: the `TrainState` arrays (step, params, frozen, batch_stats, opt_state);
* `data`: the training data iterator's state (`TrainLoader.get_state()`, JSON);
* `config`: the whole config as a flat `{"model.rpn.nms_thresh": 0.7, ...}` JSON;
* `shapes`: `{"params/backbone/...": [shape, dtype]}` of every model variable (JSON),

so that a resumed run can check, from two small JSON files and before anything is built or
compiled, that the work dir holds a checkpoint of the *same model*.

Like Detectron2's `PeriodicCheckpointer` (`engine/hooks.py`) a checkpoint is written every
`solver.checkpoint_period` iterations and after the last one; `solver.max_to_keep` of them are
kept (orbax deletes the oldest). Saving is synchronous: the train step donates its state, so
the arrays must be written before the next step reuses their buffers.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from jax_rcnn.config import to_flat_dict

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Keys that may differ between the saved and the resumed config without touching the
# parameters: kernel dispatch and where the initial weights came from.
_MODEL_KEYS_ALLOWED_TO_DIFFER = ("model.weights", "model.kernels")


def _json_roundtrip(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def config_record(config) -> dict[str, Any]:
    """The flat JSON-able form of `config` stored with every checkpoint."""
    return _json_roundtrip(to_flat_dict(config))


def variable_shapes(tree: dict[str, Any]) -> dict[str, list]:
    """`{"params/a/b": [[shape...], "float32"], ...}` for a variables-like dict of arrays."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k: [list(np.shape(v)), str(np.dtype(v.dtype))] for k, v in sorted(flat.items())}


def _state_variables(state) -> dict[str, Any]:
    return {"params": state.params, "frozen": state.frozen, "batch_stats": state.batch_stats}


class CheckpointMismatchError(ValueError):
    """The work dir holds a checkpoint of a different model."""


def _diff(saved: dict, current: dict, keys) -> list[str]:
    out = []
    for k in keys:
        a, b = saved.get(k, "<missing>"), current.get(k, "<missing>")
        if a != b:
            out.append(f"{k}: checkpoint {a!r}, config {b!r}")
    return out


class Checkpointer:
    """Saves and restores training runs in `<workdir>/checkpoints`.

    Example:
        ckpt = Checkpointer(workdir, config)
        if ckpt.latest_step() is not None:
            ckpt.check_compatible(abstract_state)          # before any compilation
            state, data_state = ckpt.restore(abstract_state)
        ...
        ckpt.save(state, loader.get_state())
    """

    def __init__(self, workdir: str | os.PathLike, config):
        """Opens (creating if needed) `<workdir>/checkpoints`.

        Args:
          workdir: the run's work dir.
          config: the run's config (saved with every checkpoint, `solver.max_to_keep`).
        """
        self.directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR)
        self.config = config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.solver.max_to_keep,
            enable_async_checkpointing=False,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config", "shapes")
        )

    def latest_step(self) -> int | None:
        """Step of the newest checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, ascending."""
        return sorted(self._manager.all_steps())

    def _read_json(self, step: int, item: str) -> Any:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
        )
        return restored[item]

    def check_compatible(self, abstract_state, step: int | None = None) -> None:
        """Raises unless the checkpoint at `step` (default: latest) is of the configured model.

        Compares the `model.*` keys of the saved config and the variable shapes/dtypes with
        `abstract_state` (`jax.eval_shape` of the fresh state); reads only two small JSON files.

        Raises:
          CheckpointMismatchError: naming the work dir and every differing key or variable.
        """
        step = self.latest_step() if step is None else step
        saved = self._read_json(step, "config")
        current = config_record(self.config)
        keys = sorted(
            k
            for k in set(saved) | set(current)
            if k.startswith("model.") and k not in _MODEL_KEYS_ALLOWED_TO_DIFFER
        )
        problems = _diff(saved, current, keys)
        if not problems:
            saved_shapes = self._read_json(step, "shapes")
            cur_shapes = _json_roundtrip(variable_shapes(_state_variables(abstract_state)))
            problems = _diff(saved_shapes, cur_shapes, sorted(set(saved_shapes) | set(cur_shapes)))
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of another model; "
                f"use another --workdir or remove that directory to start afresh:\n  "
                f"{shown}{more}"
            )
        others = _diff(
            saved,
            current,
            sorted(k for k in set(saved) | set(current) if not k.startswith("model.")),
        )
        for line in others:
            logger.warning("resuming with a changed config: %s", line)

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, Any]:
        """Restores `(state, data_state)` from `step` (default: latest).

        Args:
          abstract_state: `jax.eval_shape` of the fresh `TrainState` (structure, shapes,
            dtypes and shardings of the result).
          step: checkpoint step.
        """
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"]

    def save(self, state, data_state: Any, *, force: bool = False) -> bool:
        """Writes a checkpoint at `int(state.step)` (a no-op if one exists there already).

        Args:
          state: the `TrainState` (fully finite: the loop never saves a diverged state).
          data_state: JSON-able iterator state.
          force: unused by the periodic policy (kept for symmetry with orbax).

        Returns:
          True when something was written.
        """
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config_record(self.config)),
                shapes=ocp.args.JsonSave(variable_shapes(_state_variables(state))),
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        del force
        return bool(saved)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def load_variables(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """Model variables (`params`, `frozen`, `batch_stats`) of a jax_rcnn training checkpoint.

    Args:
      path: a work dir, its `checkpoints/` dir, or one `checkpoints/<step>` dir.
      step: checkpoint step when `path` is a work dir or `checkpoints/` (default: latest).

    Returns:
      `{"params": ..., "frozen": ..., "batch_stats": ...}` as NumPy arrays (empty collections
      dropped), ready for `model.apply` or to initialise a new run (`config.model.weights`).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        path = os.path.join(path, CHECKPOINT_DIR)
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        path, step = os.path.dirname(path), int(base)
    manager = ocp.CheckpointManager(path, item_names=("state", "data", "config", "shapes"))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no jax_rcnn checkpoint under {path}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    manager.close()
    out = {k: state[k] for k in ("params", "frozen", "batch_stats") if state.get(k)}
    return jax.tree.map(np.asarray, out)
