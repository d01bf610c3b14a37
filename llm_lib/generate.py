"""Turning next-token logits into text (chapters 25, 29, 30), optionally with a KV cache (chapter 36)."""

from __future__ import annotations

import math

import torch

from .model import eval_mode

__all__ = [
    "store_weights_input_major",
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


class _NextLogits:
    """Last-position logits ``(b, vocab)`` of a growing sequence, with or without a KV cache.

    With the cache, the first call runs the whole prompt and later calls run only
    the newest token. Once the sequence is longer than the cache's room
    (``context_size``, at most the model's context length), the window of the last
    ``context_size`` tokens slides and every position embedding shifts, so each
    step recomputes that window exactly as the uncached path does. Either way the
    logits are those of ``model(idx[:, -context_size:])[:, -1]``.
    """

    def __init__(self, model, context_size: int, use_cache: bool):
        self.model, self.context_size, self.cache = model, context_size, None
        if use_cache:
            if not hasattr(model, "new_kv_cache"):
                raise TypeError(f"use_cache=True needs a model with a KV cache (llm_lib's FastGPTModel or LlamaModel), "
                                f"got {type(model).__name__}")
            self.cache = model.new_kv_cache(min(context_size, model.cfg.context_length))

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if cache is None or idx.shape[1] > cache.max_tokens:
            return _last_logits(self.model, idx, self.context_size)
        if cache.length != idx.shape[1] - 1:  # first call (or an unexpected jump): run it all
            cache.reset()
            return self._cached_last(idx)
        return self._cached_last(idx[:, -1:])

    def _cached_last(self, new_ids: torch.Tensor) -> torch.Tensor:
        # The output head only where the next token is read: for a prompt of T tokens
        # that is 1 row of the (vocab x emb_dim) product instead of T.
        return self.model(new_ids, kv_cache=self.cache, positions=-1)


@torch.no_grad()
def generate_text_simple(model, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int) -> torch.Tensor:
    """Greedy decoding (chapter 25): append the likeliest next token
    max_new_tokens times; (batch, T) -> (batch, T + max_new_tokens)."""
    with eval_mode(model):
        for _ in range(max_new_tokens):
            # Only the last context_size tokens fit the model.
            logits = model(idx[:, -context_size:])[:, -1, :]
            next_id = logits.argmax(dim=-1, keepdim=True)  # (batch, 1)
            idx = torch.cat([idx, next_id], dim=1)
    return idx


def _check_sampling_args(temperature: float, top_k: int | None) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
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
             generator: torch.Generator | None = None, use_cache: bool = False) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after ``idx`` ``(b, T)`` with temperature and top-k sampling.

    ``temperature=0`` is greedy decoding; ``top_k`` keeps only the k most likely
    tokens before sampling. Generation stops early once every sequence has
    produced ``eos_id``; for a single sequence the ``eos_id`` token itself is not
    appended, and in a batch, sequences that finished early are padded with it.
    ``use_cache=True`` keeps earlier tokens' keys and values in a ``KVCache``:
    the same tokens (up to float rounding), each step costing one token instead
    of the whole window while the sequence fits in ``context_size``.
    """
    _check_sampling_args(temperature, top_k)
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    with eval_mode(model):
        next_logits = _NextLogits(model, context_size, use_cache)
        for _ in range(max_new_tokens):
            logits = next_logits(idx)
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
    return idx


@torch.no_grad()
def store_weights_input_major(model: torch.nn.Module) -> torch.nn.Module:
    """Keep every ``nn.Linear`` weight of ``model`` transposed in memory; returns the model.

    The weights keep their values, shapes and names; only the memory order
    changes, from ``(out, in)`` rows to ``(in, out)`` rows, the order
    transformers' GPT-2 keeps (its ``Conv1D``). A KV-cache decoding step
    multiplies one token's vector by each matrix, and on a CPU that product
    reads the ``(in, out)`` order faster (benchmarks/matvec_layout.py); it
    uses no more memory, and prompts, training and checkpoints work as
    before. Tied weights (one Parameter) change once, for both uses.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()
    return model

