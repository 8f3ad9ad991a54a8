"""Dataset readers, training and evaluation of the mask classifier (may import ``webapp``)."""
