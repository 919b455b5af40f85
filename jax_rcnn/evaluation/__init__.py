"""jax_rcnn.evaluation."""
