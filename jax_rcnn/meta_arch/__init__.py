"""jax_rcnn.meta_arch: each detector of the family as a short wiring of shared stages.

The folder reads like the model zoo:

| file | what |
|---|---|
| `common.py` | bound networks (`Networks`), normalisation, the backbone stage, first-slot runs |
| `rpn.py` | the RPN stage: head, anchor targets and losses, proposals |
| `roi_heads.py` | the ROI-head stages: ROI sampling, pooling, box head, mask head |
| `res5_roi_heads.py` | C4's ROI-head stages (`Res5ROIHeads`): res5 as the head on 14x14 pools |
| `cascade_roi_heads.py` | `CascadeROIHeads`: box stages, each on the previous one's boxes |
| `dense_head.py` | the one-stage dense head: anchor labels, focal/box losses, decoding |
| `rcnn.py` | Faster / Mask R-CNN (`GeneralizedRCNN`; ROI heads by `model.roi_heads.name`) |
| `retinanet.py` | RetinaNet |
| `proposal_network.py` | RPN-only proposal models (`ProposalNetwork`) |
| `panoptic_fpn.py` | Panoptic FPN (`PanopticFPN`: Mask R-CNN + semantic head) |
| `semantic_seg.py` | semantic segmentation (`SemanticSegmentor`: FPN + semantic head) |

A stage is a pure function `(config, nets, features, inputs[, gt, key]) -> outputs[, losses]`;
the networks (Flax modules, parameters) live in `jax_rcnn.modeling`. Each meta-architecture
module has the same three functions:

* `inference(model, variables, images, image_sizes, original_sizes, *, config, backend)`
  -> detections (`boxes`, `scores`, `classes`, `valid`, ...; `proposal_boxes`,
  `objectness_logits`, `valid` for `ProposalNetwork`);
* `forward_train(model, variables, batch, key, *, config, mutable, backend)` -> `(losses,
  aux)`, Detectron2's loss dict;
* `initial_loss_state(config)` -> training state the losses carry from step to step (e.g.
  RetinaNet's loss normaliser; `{}` when none), kept in the train state and checkpoints.

`config.model.meta_architecture` (Detectron2's `MODEL.META_ARCHITECTURE`) names the module;
`get(config)` looks it up in `META_ARCHITECTURES`, a plain dict. A new detector is a new module
here plus its networks in `jax_rcnn.modeling`; it does not add branches to another's pipeline.
"""

from __future__ import annotations

from types import ModuleType

from jax_rcnn.meta_arch import panoptic_fpn, proposal_network, rcnn, retinanet, semantic_seg

META_ARCHITECTURES: dict[str, ModuleType] = {
    "GeneralizedRCNN": rcnn,
    "RetinaNet": retinanet,
    "ProposalNetwork": proposal_network,
    "PanopticFPN": panoptic_fpn,
    "SemanticSegmentor": semantic_seg,
}


def get(config) -> ModuleType:
    """The meta-architecture module of `config.model.meta_architecture`.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    name = config.model.meta_architecture
    if name not in META_ARCHITECTURES:
        raise ValueError(
            f"config.model.meta_architecture = {name!r}: not one of {sorted(META_ARCHITECTURES)}"
        )
    return META_ARCHITECTURES[name]
