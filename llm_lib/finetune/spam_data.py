"""Chapter 33's data: the SMS Spam Collection read, cleaned of repeats, balanced, and padded into batches.

Rows are ``(text, label)`` pairs, label 0 for ham and 1 for spam. ``SpamDataset``
turns them into ``(ids, label, length)``: token ids padded at the end, and the
count of real tokens, which says where each message's last token is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["CLASS_NAMES", "PAD_TOKEN_ID", "load_sms_spam", "drop_duplicates", "balance_classes", "SpamDataset"]

CLASS_NAMES = ("ham", "spam")  # label 0 and label 1
PAD_TOKEN_ID = 50256           # GPT-2's <|endoftext|>, which no SMS contains


def load_sms_spam(name: str = "SMSSpamCollection") -> list[tuple[str, int]]:
    """The SMS Spam Collection as ``(text, label)`` pairs in file order; label 0 is ham, 1 is spam.

    Each line is ``label<TAB>text``. Quote characters are part of the text
    (no CSV quoting), and only ``\\n`` ends a line.
    """
    from ..data_sources import load_text

    rows = []
    for number, line in enumerate(load_text(name).split("\n"), start=1):
        if not line:
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in CLASS_NAMES:
            raise ValueError(f"{name} line {number} is not 'ham<TAB>text' or 'spam<TAB>text': {line[:60]!r}")
        rows.append((text, CLASS_NAMES.index(label)))
    return rows


def drop_duplicates(rows: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The rows with every repeated text removed: the first copy of each text stays, in its place.

    A message that occurs twice could land in both the training and the test
    split, and the test would then reward memorising it. A text repeated with
    two different labels is an error, since neither copy can be trusted.
    """
    first_label: dict[str, int] = {}
    kept = []
    for text, label in rows:
        if text in first_label:
            if first_label[text] != label:
                raise ValueError(f"the text {text[:60]!r} occurs with labels {first_label[text]} and {label}")
            continue
        first_label[text] = label
        kept.append((text, label))
    return kept


def balance_classes(rows: Sequence[tuple[str, int]], seed: int | None = 123,
                    per_class: int | None = None) -> list[tuple[str, int]]:
    """Undersample every class to ``per_class`` rows (a seeded draw); kept rows stay in their order.

    ``per_class=None`` takes the size of the smallest class, so nothing of it is dropped.
    """
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(rows):
        by_class.setdefault(label, []).append(i)
    if not by_class:
        raise ValueError("no rows to balance")
    smallest = min(len(idx) for idx in by_class.values())
    if per_class is None:
        per_class = smallest
    elif not 1 <= per_class <= smallest:
        label = min(by_class, key=lambda c: len(by_class[c]))
        raise ValueError(f"per_class must be in 1..{smallest}: class {label} has only {smallest} rows, "
                         f"got per_class={per_class}")
    rng = random.Random(seed)
    keep = sorted(i for label in sorted(by_class) for i in rng.sample(by_class[label], per_class))
    return [rows[i] for i in keep]


class SpamDataset(Dataset):
    """``(text, label)`` rows as ``(ids (max_length,), label, length)``, padded with ``pad_token_id``.

    ``max_length=None`` pads to the longest message; a number truncates longer
    messages to it (keeping their start). ``context_length`` (the model's) is
    checked, so no message is longer than the model can read.
    """

    def __init__(self, rows: Sequence[tuple[str, int]], tokenizer, max_length: int | None = None,
                 context_length: int | None = None, pad_token_id: int = PAD_TOKEN_ID):
        if not rows:
            raise ValueError("SpamDataset needs at least one (text, label) row")
        self.texts = [text for text, _ in rows]
        self.labels = [int(label) for _, label in rows]
        encoded = [tokenizer.encode(text) for text in self.texts]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"message {empty[0]} has no tokens, so it has no last token to classify")
        longest = max(len(ids) for ids in encoded)
        if max_length is None:
            if context_length is not None and longest > context_length:
                raise ValueError(
                    f"the longest message has {longest} tokens but the model's context_length is "
                    f"{context_length}; pass max_length={context_length} to truncate longer messages"
                )
            max_length = longest
        elif max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        elif context_length is not None and max_length > context_length:
            raise ValueError(f"max_length={max_length} is longer than the model's context_length="
                             f"{context_length}")
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.encoded = [ids[:max_length] for ids in encoded]
        self.lengths = [len(ids) for ids in self.encoded]

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int):
        ids = self.encoded[i] + [self.pad_token_id] * (self.max_length - self.lengths[i])
        return torch.tensor(ids), torch.tensor(self.labels[i]), torch.tensor(self.lengths[i])
