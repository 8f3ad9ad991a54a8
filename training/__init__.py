"""Dataset readers, training and evaluation of the mask classifier (may import ``webapp``)."""

import os

# TensorFlow's default CPU allocator hands every step's large activation buffers back to the
# operating system and faults them in again; on the 2-core VMs here that cost a third of a
# training step in kernel time (MobileNetV2 α 0.35 at 224 px, batch 64: 1.15 s per step, of
# which ~0.5 s system time, against 0.70 s with the BFC allocator, which keeps its arena).
# Set before TensorFlow loads; the arithmetic, and so the trained weights, do not depend on it.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
