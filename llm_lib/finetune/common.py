"""Pieces both finetuning chapters use."""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["train_val_test_split"]


def train_val_test_split(items: Sequence, train_frac: float, val_frac: float, seed: int | None = 123):
    """``(train, val, test)`` lists: ``items`` shuffled with ``seed`` (``None`` keeps the order), then cut.

    The test part gets what is left after ``train_frac`` and ``val_frac``, so
    ``train_val_test_split(rows, 0.7, 0.1)`` is a 70/10/20 split. Each cut is
    rounded down, and every row lands in exactly one part.
    """
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac <= 1):
        raise ValueError(f"need 0 < train_frac < 1, 0 <= val_frac and train_frac + val_frac <= 1; "
                         f"got train_frac={train_frac}, val_frac={val_frac}")
    items = list(items)
    if seed is not None:
        random.Random(seed).shuffle(items)
    n_train = int(len(items) * train_frac)
    n_val = int(len(items) * val_frac)
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]
