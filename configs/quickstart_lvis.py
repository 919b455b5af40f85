"""Quickstart, long-tailed: the quickstart Mask R-CNN on the long-tailed built-in dataset, with
and without Detectron2's LVIS recipe (CPU).

Not a Detectron2 model-zoo config: `configs/quickstart.py` (same model, schedule and seed) on
`data.shapes.long_tail = True`: 6 shape classes, each a third as frequent as the one before in
the 1500 training images (circle in ~1360 images, cross in ~20: LVIS frequency groups f f f f c
r), validation classes uniform over 300 images so the rare classes' AP is measurable; LVIS json
and LVIS AP (APr / APc / APf, `jax_rcnn.evaluation.lvis_evaluation`). 128 x 160 images, as the
quickstart.

Variants:
* (none): the baseline, Detectron2's default `TrainingSampler`;
* `:rfs`: `RepeatFactorTrainingSampler` with repeat threshold 0.1 (Detectron2's LVIS configs
  use 0.001 for LVIS's scale: there a rare class is in ~0.01 % of the images, here in ~1.4 %,
  so 0.1 gives the rare class about the same repeat factor, ~2.7);
* `:fed_loss`: Detectron2's long-tail classifier: sigmoid cross-entropy over the federated class
  subset (`ROI_BOX_HEAD.USE_SIGMOID_CE`, `USE_FED_LOSS`, weight power 0.5) with 4 classes per
  step instead of 50 (with 6 classes, 50 would always be all of them, i.e. plain sigmoid CE);
* `:rfs_fed_loss`: both;
* `:smoke`, `:<variant>_smoke`: 4 iterations on 16 images, for the tests.

Commands (from the repository root):

    python train.py --config configs/quickstart_lvis.py --workdir /tmp/qs_lvis
    python train.py --config configs/quickstart_lvis.py:rfs --workdir /tmp/qs_lvis_rfs
    python train.py --config configs/quickstart_lvis.py:rfs_fed_loss --workdir /tmp/qs_lvis_fed
"""

import ml_collections

from configs import quickstart

VARIANTS = ("rfs", "fed_loss", "rfs_fed_loss")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config (variants in the module docstring)."""
    smoke = arg is not None and (arg == "smoke" or arg.endswith("_smoke"))
    variant = None if arg in (None, "smoke") else arg.removesuffix("_smoke")
    if variant is not None and variant not in VARIANTS:
        known = ", ".join(repr(v) for v in ("smoke", *VARIANTS, *(v + "_smoke" for v in VARIANTS)))
        raise ValueError(f"unknown config variant {arg!r} (known: {known})")
    config = quickstart.get_config("smoke" if smoke else None)
    config.unlock()
    sh = config.data.shapes
    sh.long_tail = True
    sh.num_classes = 6
    if not smoke:
        sh.num_train, sh.num_val = 1500, 300
    config.model.roi_heads.num_classes = 6
    if variant in ("rfs", "rfs_fed_loss"):
        config.dataloader.sampler_train = "RepeatFactorTrainingSampler"
        config.dataloader.repeat_threshold = 0.1
    if variant in ("fed_loss", "rfs_fed_loss"):
        bh = config.model.roi_box_head
        bh.use_sigmoid_ce = True
        bh.use_fed_loss = True
        bh.fed_loss_num_classes = 4
    config.lock()
    return config
