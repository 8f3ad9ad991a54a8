"""Inference core: decode, detect, crop, classify (``pipeline.py`` ties them). Knows nothing of Flask or sockets."""
