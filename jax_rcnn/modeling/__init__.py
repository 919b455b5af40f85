"""jax_rcnn.modeling."""
