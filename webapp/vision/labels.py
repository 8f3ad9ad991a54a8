"""The three canonical labels and the dataset aliases that map onto them (DESIGN.md contract)."""

from __future__ import annotations

WITH_MASK = "with_mask"
MASK_INCORRECT = "mask_incorrect"
WITHOUT_MASK = "without_mask"

# Fixed order: index in this tuple is the class index of the classifier's output.
LABELS: tuple[str, ...] = (WITH_MASK, MASK_INCORRECT, WITHOUT_MASK)

ALIASES: dict[str, str] = {
    "mask_weared_incorrect": MASK_INCORRECT,  # kaggle-facemask
    "mask_worn_incorrect": MASK_INCORRECT,
    "incorrect_mask": MASK_INCORRECT,
    "con_mascarilla": WITH_MASK,  # maskedfacenet-maskon (MaskON, Spanish)
    "mascarilla_mal_puesta": MASK_INCORRECT,
    "sin_mascarilla": WITHOUT_MASK,
    "mask": WITH_MASK,
    "no_mask": WITHOUT_MASK,
}


def canonical_label(name: str) -> str | None:
    """Map a dataset's label (any case, spaces or dashes) to a canonical one, or ``None``."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in LABELS:
        return key
    return ALIASES.get(key)
