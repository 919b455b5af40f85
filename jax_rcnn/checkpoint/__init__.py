"""jax_rcnn.checkpoint."""
