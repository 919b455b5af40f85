"""jax_rcnn: Detectron2's detector family (Faster / Mask R-CNN, RetinaNet, RPN-only;
ResNet-FPN) in JAX.

Layers (enforced by `tests/test_layering.py`):
  * geometry (`boxes`, `anchors`, `matching`, `sampling`, `poolers`, ...): pure jax.numpy;
  * `modeling/`: Flax Linen modules, only where parameters live (one container per detector);
  * `meta_arch/`: each detector as a short wiring of shared stages (pure functions);
  * `data/`, `evaluation/`, `checkpoint/`: host-side NumPy / I/O;
  * `pallas_kernels` (separate leaf package): ROIAlign and NMS kernels + references,
    reached through `jax_rcnn.kernels` only.
"""

__version__ = "0.1.0"
