"""Attention, built up in the order the book derives it (chapters 13-18).

1. ``simple_attention``: no trainable weights, scores are plain dot products.
2. ``SelfAttentionV1`` / ``SelfAttentionV2``: trainable query, key and value projections.
3. ``CausalAttention``: a token may only look at itself and earlier tokens.
4. ``MultiHeadAttentionWrapper``: several causal heads side by side.
5. ``MultiHeadAttention``: the same heads computed at once with one matrix per
   projection, as GPT-2 does.

The fast path of chapter 36 is kept apart from these: ``LayerKVCache`` keeps
the keys and values of the tokens a layer has already seen, and
``cached_attention(att, x, kv_cache, fused)`` computes ``att(x)`` from them,
each new token computing only its own, optionally with PyTorch's fused
``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "example_inputs",
    "simple_attention",
    "causal_mask",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "CausalAttention",
    "MultiHeadAttentionWrapper",
    "MultiHeadAttention",
    "LayerKVCache",
    "cached_attention",
]


def example_inputs() -> tuple[list[str], torch.Tensor]:
    """The attention chapters' running example: six words and their 3-dimensional embeddings ``(6, 3)``.

    The numbers are made up so that related words point in similar directions
    (the two nouns of the animal, the two words about leaves), which makes the
    attention weights easy to read.
    """
    words = ["Curious", "cats", "quietly", "watch", "falling", "leaves"]
    embeddings = torch.tensor([
        [0.72, 0.35, 0.10],  # Curious
        [0.65, 0.48, 0.22],  # cats
        [0.15, 0.80, 0.31],  # quietly
        [0.28, 0.62, 0.55],  # watch
        [0.05, 0.25, 0.91],  # falling
        [0.12, 0.33, 0.84],  # leaves
    ])
    return words, embeddings


def simple_attention(x: torch.Tensor, return_weights: bool = False):
    """Context vectors softmax(x x^T) x (chapter 14), for inputs
    (tokens, dim) or (batch, tokens, dim).

    Every token is a query, a key and a value at once; nothing is learned.
    With ``return_weights=True`` also returns the (tokens, tokens) weights.
    """
    scores = x @ x.transpose(-2, -1)           # every pair of tokens
    weights = torch.softmax(scores, dim=-1)    # each row sums to 1
    context = weights @ x                      # weighted sums of the inputs
    return (context, weights) if return_weights else context


def causal_mask(num_tokens: int, device=None) -> torch.Tensor:
    """Boolean ``(num_tokens, num_tokens)`` mask, True above the diagonal (the future to hide)."""
    return torch.triu(torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device), 1)


def _check_length(num_tokens: int, context_length: int, cached: int = 0) -> None:
    if cached + num_tokens > context_length:
        have = f"{num_tokens} tokens" if not cached else f"{num_tokens} new tokens after {cached} cached ones"
        raise ValueError(
            f"input has {have} but this attention layer supports at most "
            f"context_length={context_length}; truncate the input or build the layer "
            f"with a larger context_length"
        )


class SelfAttentionV1(nn.Module):
    """Scaled dot-product self-attention with raw weight matrices
    (chapter 15): (tokens, d_in) -> (tokens, d_out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        # torch.rand keeps the hand-worked numbers of chapter 15 small and
        # positive.
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = x @ self.W_query
        keys = x @ self.W_key
        values = x @ self.W_value
        scores = queries @ keys.transpose(-2, -1)
        d_k = keys.shape[-1]
        weights = torch.softmax(scores / math.sqrt(d_k), dim=-1)
        return weights @ values


class SelfAttentionV2(nn.Module):
    """``SelfAttentionV1``'s computation with ``nn.Linear`` projections,
    which initialise better (chapter 15)."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = self.W_query(x)
        keys = self.W_key(x)
        values = self.W_value(x)
        scores = queries @ keys.transpose(-2, -1)
        d_k = keys.shape[-1]
        weights = torch.softmax(scores / math.sqrt(d_k), dim=-1)
        return weights @ values

    @torch.no_grad()
    def load_from_v1(self, v1: SelfAttentionV1) -> SelfAttentionV2:
        """Copy a ``SelfAttentionV1``'s matrices (``nn.Linear`` stores
        their transposes)."""
        self.W_query.weight.copy_(v1.W_query.T)
        self.W_key.weight.copy_(v1.W_key.T)
        self.W_value.weight.copy_(v1.W_value.T)
        return self


class CausalAttention(nn.Module):
    """Single-head causal self-attention with dropout (chapter 16):
    (batch, tokens, d_in) -> (batch, tokens, d_out)."""

    def __init__(self, d_in: int, d_out: int, context_length: int,
                 dropout: float, qkv_bias: bool = False):
        super().__init__()
        self.d_out = d_out
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        # A buffer moves with .to(device) but is not a trained parameter.
        self.register_buffer("mask", causal_mask(context_length),
                             persistent=False)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Causal attention weights (batch, tokens, tokens), before
        dropout."""
        num_tokens = x.shape[-2]
        _check_length(num_tokens, self.context_length)
        queries, keys = self.W_query(x), self.W_key(x)
        scores = queries @ keys.transpose(-2, -1)
        # The mask is built for the longest input; cut it to this one.
        future = self.mask[:num_tokens, :num_tokens]
        scores = scores.masked_fill(future, -torch.inf)
        return torch.softmax(scores / math.sqrt(self.d_out), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.dropout(self.attention_weights(x))
        return weights @ self.W_value(x)


class MultiHeadAttentionWrapper(nn.Module):
    """``num_heads`` independent ``CausalAttention`` heads, their outputs
    concatenated (chapter 17): ``num_heads * d_out`` features per token."""

    def __init__(self, d_in: int, d_out: int, context_length: int,
                 dropout: float, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        # nn.ModuleList registers each head, so its weights are trained
        # and moved with the wrapper.
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)

    @torch.no_grad()
    def to_multihead(self) -> MultiHeadAttention:
        """An equivalent ``MultiHeadAttention``: head weights stacked, output projection = identity."""
        first = self.heads[0]
        head_dim, d_in = first.W_query.weight.shape
        num_heads = len(self.heads)
        mha = MultiHeadAttention(
            d_in, head_dim * num_heads, first.context_length, first.dropout.p, num_heads,
            qkv_bias=first.W_query.bias is not None,
        )
        for name in ("W_query", "W_key", "W_value"):
            target = getattr(mha, name)
            target.weight.copy_(torch.cat([getattr(h, name).weight for h in self.heads], dim=0))
            if target.bias is not None:
                target.bias.copy_(torch.cat([getattr(h, name).bias for h in self.heads], dim=0))
        mha.out_proj.weight.copy_(torch.eye(head_dim * num_heads))
        mha.out_proj.bias.zero_()
        return mha


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention as in GPT-2 (chapter 18):
    (batch, tokens, d_in) -> (batch, tokens, d_out), with d_out split
    across num_heads heads of head_dim = d_out // num_heads features."""

    def __init__(self, d_in: int, d_out: int, context_length: int,
                 dropout: float, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        if num_heads < 1 or d_out % num_heads != 0:
            raise ValueError(
                f"d_out={d_out} must be divisible by num_heads={num_heads} "
                f"so that every head gets the same number of features")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        # One matrix per projection serves every head at once.
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # mixes what the heads found
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length),
                             persistent=False)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(b, T, d_out) -> (b, num_heads, T, head_dim)."""
        b, num_tokens, _ = t.shape
        t = t.view(b, num_tokens, self.num_heads, self.head_dim)
        return t.transpose(1, 2)

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        """(b, num_heads, T, head_dim) -> (b, T, d_out), heads side by side."""
        b, _, num_tokens, _ = context.shape
        context = context.transpose(1, 2).contiguous()
        return context.view(b, num_tokens, self.d_out)

    def causal_weights(self, queries: torch.Tensor,
                       keys: torch.Tensor) -> torch.Tensor:
        """Every head's masked, scaled softmax: (b, num_heads, T, T)."""
        num_tokens = queries.shape[-2]
        scores = queries @ keys.transpose(-2, -1)
        future = self.mask[:num_tokens, :num_tokens]
        scores = scores.masked_fill(future, -torch.inf)
        return torch.softmax(scores / math.sqrt(self.head_dim), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.context_length)
        queries = self.split_heads(self.W_query(x))  # (b, nh, T, hd)
        keys = self.split_heads(self.W_key(x))
        values = self.split_heads(self.W_value(x))
        weights = self.causal_weights(queries, keys)  # (b, nh, T, T)
        context = self.dropout(weights) @ values  # (b, nh, T, hd)
        return self.out_proj(self.merge_heads(context))

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The weights (b, num_heads, T, T) without dropout, for plotting."""
        _check_input(x, self.context_length)
        queries = self.split_heads(self.W_query(x))
        return self.causal_weights(queries, self.split_heads(self.W_key(x)))


def _check_input(x: torch.Tensor, context_length: int, cached: int = 0) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected input of shape (batch, tokens, d_in), got {tuple(x.shape)}")
    _check_length(x.shape[1], context_length, cached)


# --- The fast path (chapter 36) ------------------------------------------------------------
# The same attention, computed two faster ways: with a KV cache, each new token
# computes only its own keys and values; with fused=True, PyTorch's
# scaled_dot_product_attention computes the masked softmax in one kernel.


class LayerKVCache:
    """One attention layer's keys and values so far, each ``(batch, num_heads, tokens, head_dim)``.

    Room for ``max_tokens`` tokens is allocated at the first ``append``, so
    appending never copies what is already stored. Meant for inference (under
    ``torch.no_grad()``): the buffers are overwritten in place.
    """

    def __init__(self, max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0  # tokens stored

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values ``(batch, num_heads, new_tokens, head_dim)``; return all so far."""
        b, num_heads, new_tokens, head_dim = keys.shape
        end = self.length + new_tokens
        if end > self.max_tokens:
            raise ValueError(
                f"the KV cache holds {self.length} tokens and has room for max_tokens={self.max_tokens}, "
                f"so it cannot take {new_tokens} more; start a new cache (reset()) with fewer tokens"
            )
        if self.keys is None:
            # never read before written: only [:, :, :length] is returned
            self.keys = keys.new_empty(b, num_heads, self.max_tokens, head_dim)
            self.values = values.new_empty(b, num_heads, self.max_tokens, head_dim)
        elif (b, num_heads, head_dim) != (self.keys.shape[0], self.keys.shape[1], self.keys.shape[3]):
            raise ValueError(
                f"the KV cache was filled with (batch, num_heads, head_dim) = "
                f"{(self.keys.shape[0], self.keys.shape[1], self.keys.shape[3])}, "
                f"got {(b, num_heads, head_dim)}; use one cache per batch"
            )
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reset(self) -> None:
        """Forget the stored tokens (the buffers are kept and overwritten)."""
        self.length = 0

    def repeat(self, copies: int) -> LayerKVCache:
        """A new cache holding ``copies`` copies of each row: batch ``b`` becomes ``b * copies``.

        Row ``i`` of the new cache is row ``i // copies`` of this one, so a
        prompt cached once can be continued in several ways in one batch.
        """
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        out = LayerKVCache(self.max_tokens)
        if self.keys is not None:
            out.keys = self.keys.repeat_interleave(copies, dim=0)
            out.values = self.values.repeat_interleave(copies, dim=0)
            out.length = self.length
        return out


def cached_attention(att: MultiHeadAttention, x: torch.Tensor,
                     kv_cache: LayerKVCache | None = None,
                     fused: bool = False) -> torch.Tensor:
    """``att(x)``, where ``x`` are the tokens that follow those in
    ``kv_cache``: their keys and values are appended to the cache, and
    they attend to every cached token and, causally, to each other."""
    start = 0 if kv_cache is None else kv_cache.length
    _check_input(x, att.context_length, start)
    queries = att.split_heads(att.W_query(x))
    keys = att.split_heads(att.W_key(x))
    values = att.split_heads(att.W_value(x))
    if kv_cache is not None:
        keys, values = kv_cache.append(keys, values)  # (b, nh, start+T, hd)
    # The new tokens sit at positions start, start + 1, ...: their rows
    # of the causal mask.
    future = att.mask[start:start + x.shape[1], :keys.shape[-2]]
    if fused:
        context = _fused_context(att, queries, keys, values, future, start)
    else:
        scores = queries @ keys.transpose(-2, -1)
        scores = scores.masked_fill(future, -torch.inf)
        weights = torch.softmax(scores / math.sqrt(att.head_dim), dim=-1)
        context = att.dropout(weights) @ values
    return att.out_proj(att.merge_heads(context))


def _fused_context(att, queries, keys, values, future, start: int):
    dropout_p = att.dropout.p if att.training else 0.0
    sdpa = F.scaled_dot_product_attention
    if start == 0:  # no cache: the usual square causal mask
        return sdpa(queries, keys, values, is_causal=True, dropout_p=dropout_p)
    if queries.shape[-2] == 1:  # one new token may see every cached one
        return sdpa(queries, keys, values, dropout_p=dropout_p)
    # is_causal would align the mask to the top left; the new tokens are the
    # last rows, so pass their rows of the mask instead.
    return sdpa(queries, keys, values, attn_mask=~future, dropout_p=dropout_p)
