r"""A Detectron2 YAML config as a jax_rcnn config: `get_config("path/to/recipe.yaml")`.

`train.py --config recipe.yaml` loads this file with the YAML as its argument, so a Detectron2
user trains their recipe unchanged (`_BASE_` chains and full `cfg.dump()`s alike) and overrides
keys with jax_rcnn names (`--config.solver.max_iter=8`):

    python train.py --config recipe.yaml --workdir work_dirs/recipe
    python train.py --config configs/detectron2_yaml.py:recipe.yaml --workdir ...  # the same

The translation is `jax_rcnn.config_from_detectron2.from_detectron2` (Detectron2's defaults +
the YAML; every key mapped, accepted as inert, or refused by name). Builtin dataset names in
`DATASETS.TRAIN` / `TEST` (`coco_2017_train`, ...) find their files under
`$DETECTRON2_DATASETS`; other names need `--config.data.train.json=...
--config.data.train.images=...` (and `test`).
"""

import ml_collections

from jax_rcnn.config_from_detectron2 import from_detectron2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The jax_rcnn config of the Detectron2 YAML file `arg`, unlocked for overrides' checks."""
    if not arg:
        raise ValueError(
            "configs/detectron2_yaml.py needs a YAML path: ...detectron2_yaml.py:x.yaml"
        )
    config = from_detectron2(arg)
    config.unlock()  # train.py locks it again (lock_config=True)
    return config
