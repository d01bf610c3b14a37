"""Turning next-token logits into text (chapters 25, 29, 30)."""

from __future__ import annotations

import torch

__all__ = [
    "text_to_token_ids",
    "token_ids_to_text",
    "generate_text_simple",
    "generate",
    "next_token_probabilities",
]


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Encode ``text`` as a ``(1, tokens)`` tensor (``<|endoftext|>`` allowed as a token)."""
    try:
        ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    except TypeError:  # tokenizers without special-token handling
        ids = tokenizer.encode(text)
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    """Decode a ``(1, tokens)`` or ``(tokens,)`` tensor of ids back to a string."""
    if token_ids.dim() == 2:
        if token_ids.shape[0] != 1:
            raise ValueError(f"expected one sequence, got a batch of {token_ids.shape[0]}")
        token_ids = token_ids[0]
    return tokenizer.decode(token_ids.tolist())


def _last_logits(model, idx: torch.Tensor, context_size: int) -> torch.Tensor:
    # Only the last `context_size` tokens fit the model; older ones are dropped.
    return model(idx[:, -context_size:])[:, -1, :]


@torch.no_grad()
def generate_text_simple(model, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int) -> torch.Tensor:
    """Greedy decoding: append the most likely next token ``max_new_tokens`` times; ``(b, T) -> (b, T+n)``."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            next_id = _last_logits(model, idx, context_size).argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, next_id], dim=1)
    finally:
        model.train(was_training)
    return idx


def _check_sampling_args(temperature: float, top_k: int | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")


def next_token_probabilities(logits: torch.Tensor, temperature: float = 1.0,
                             top_k: int | None = None) -> torch.Tensor:
    """Sampling distribution over the vocabulary for logits ``(…, vocab)``: top-k filter, then softmax(logits/T).

    ``temperature=0`` puts all probability on the most likely token (greedy).
    """
    _check_sampling_args(temperature, top_k)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, -torch.inf)
    if temperature == 0:
        return torch.nn.functional.one_hot(
            logits.argmax(dim=-1), logits.shape[-1]
        ).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after ``idx`` ``(b, T)`` with temperature and top-k sampling.

    ``temperature=0`` is greedy decoding; ``top_k`` keeps only the k most likely
    tokens before sampling. Generation stops early once every sequence has
    produced ``eos_id``; for a single sequence the ``eos_id`` token itself is not
    appended, and in a batch, sequences that finished early are padded with it.
    """
    _check_sampling_args(temperature, top_k)
    was_training = model.training
    model.eval()
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            logits = _last_logits(model, idx, context_size)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # top-k cannot change the argmax
            else:
                probs = next_token_probabilities(logits, temperature, top_k)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            if eos_id is not None:
                finished |= next_id.squeeze(1) == eos_id
                if finished.all() and idx.shape[0] == 1:
                    break
                next_id = next_id.masked_fill(finished.unsqueeze(1), eos_id)
            idx = torch.cat([idx, next_id], dim=1)
            if eos_id is not None and finished.all():
                break
    finally:
        model.train(was_training)
    return idx
