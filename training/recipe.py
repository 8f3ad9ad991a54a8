"""What decides a classifier's trained weights, as one record: CLI flags, the CV folder's
``config.json`` and the model card all come from it. Kept free of Keras so reports can read it."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace

from webapp.vision.crop import DEFAULT_MARGIN


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights, given the training faces and the seed.

    The defaults are the shipped recipe (chosen by 5-fold cross-validation; model/MODEL_CARD.md).
    """

    alpha: float = 0.35
    size: int = 224
    margin: float = DEFAULT_MARGIN
    balance: str = "class_weight"  # or "sampling" or "none"
    real_share: float = 0.0  # 0: off; else the least share of each class's loss weight held by real photos
    label_smoothing: float = 0.1
    focal_gamma: float = 0.0  # 0: cross-entropy; > 0: focal loss, easy faces weigh (1 - p)^gamma less
    occlusion: float = 0.3  # probability of a synthetic hand over the mouth of an unmasked face
    pulled_mask: float = 0.0  # probability that an unmasked street face gets a real mask below its nose
    head_epochs: int = 4
    finetune_epochs: int = 16
    finetune_layers: int = 100
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    finetune_schedule: str = "constant"  # or "cosine": the fine-tune rate decays to 0 by the last epoch
    batch_size: int = 64
    seed: int = 1234

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One command-line flag per field (``--label-smoothing``...), defaulting to the recipe."""
        default = cls()
        choices = {"alpha": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), "balance": ("class_weight", "sampling", "none"),
                   "finetune_schedule": ("constant", "cosine")}
        for f in fields(cls):
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(default, f.name)),
                                default=getattr(default, f.name), choices=choices.get(f.name))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Recipe":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @classmethod
    def normalised(cls, recorded: dict) -> dict:
        """A recorded recipe with the fields added since at their defaults (which reproduce what
        runs before those fields did), so old and new records compare."""
        return asdict(cls(**recorded))

    def changed(self, spec: str) -> "Recipe":
        """This recipe with the changes ``FIELD=VALUE,...`` (``alpha=1.0,size=160``): how the
        command line names an ensemble's further members."""
        default, changes = asdict(self), {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            key = name.strip().replace("-", "_")
            if not sep or key not in default:
                raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(default)}")
            try:
                changes[key] = type(default[key])(value.strip())
            except ValueError:
                raise ValueError(f"{item!r}: {value.strip()!r} is not a {type(default[key]).__name__}") from None
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)
