"""Model-zoo configs (ml_collections), named after Detectron2's model zoo."""
