"""Input-target pairs for next-token prediction (chapters 9, 12, 27)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["GPTDataset", "create_dataloader"]


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    except TypeError:  # tokenizers that take no allowed_special argument
        return tokenizer.encode(text)


class GPTDataset(Dataset):
    """Sliding windows over a tokenised text (chapter 9): item i is
    (input ids, the same ids shifted by one), each of max_length tokens.

    Windows start every ``stride`` tokens; ``stride == max_length`` gives
    non-overlapping windows, a smaller stride overlaps them.
    """

    def __init__(self, text: str, tokenizer, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be >= 1, "
                             f"got {max_length} and {stride}")
        token_ids = torch.tensor(_encode(tokenizer, text), dtype=torch.long)
        if len(token_ids) < max_length + 1:
            raise ValueError(
                f"the text has {len(token_ids)} tokens, too few for one "
                f"window of max_length={max_length}: a window needs "
                f"max_length + 1 = {max_length + 1} tokens (the inputs "
                f"plus one more target); use a longer text or a smaller "
                f"max_length"
            )
        self.token_ids = token_ids
        self.max_length = max_length
        self.stride = stride
        # Every start that leaves room for max_length inputs and the
        # targets, which reach one token further.
        self.starts = range(0, len(token_ids) - max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        start = self.starts[i]
        chunk = self.token_ids[start : start + self.max_length + 1]
        return chunk[:-1], chunk[1:]


def create_dataloader(text: str, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                      shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                      tokenizer=None, seed: int | None = None) -> DataLoader:
    """A ``DataLoader`` of ``(inputs, targets)`` batches, each ``(batch_size, max_length)``.

    ``tokenizer`` defaults to GPT-2's (tiktoken); ``seed`` makes the shuffle order reproducible.
    """
    if tokenizer is None:
        from .tokenizer import get_gpt2_encoding

        tokenizer = get_gpt2_encoding()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = GPTDataset(text, tokenizer, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"the text gives only {len(dataset)} windows of max_length={max_length} "
            f"(stride={stride}), fewer than batch_size={batch_size}, so drop_last=True would "
            f"leave no batch at all; use a smaller batch_size or stride, or drop_last=False"
        )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=generator)
