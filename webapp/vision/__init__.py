"""Inference core: crop, classify (and later detect). Knows nothing of Flask or sockets."""
