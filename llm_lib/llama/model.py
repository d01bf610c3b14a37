"""The Llama family, built from GPT-2's pieces by four changes (chapter 32).

GPT-2 (``llm_lib.model``)          Llama (this module)
--------------------------------   -------------------------------------------
LayerNorm (mean, variance, shift)  ``RMSNorm``: divide by the root mean square
learned position table (pos_emb)   ``RotaryEmbedding``: rotate queries, keys
GELU feed-forward, 4x wide         ``SwiGLU``: a gated feed-forward
a key and value per query head     ``GroupedQueryAttention``: heads share them

plus no biases anywhere, no dropout, and an output head tied to the token
embedding. ``LlamaModel`` keeps ``GPTModel``'s interface (``forward(ids,
kv_cache)``, ``backbone``, ``head``, ``new_kv_cache``), so ``llm_lib.generate``
drives both. Code lines stay within 80 columns: chapter 32 shows them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import LayerKVCache, _check_length
from ..fast import KVCache
from ..model import check_token_ids, select_positions

# F.scaled_dot_product_attention shares key/value heads itself from torch 2.5.
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")

__all__ = [
    "LlamaConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "GroupedQueryAttention",
    "LlamaBlock",
    "LlamaModel",
]


@dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama-family model (defaults: SmolLM2-135M)."""

    vocab_size: int = 49152
    context_length: int = 8192
    emb_dim: int = 576
    n_heads: int = 9           # query heads
    n_kv_heads: int = 3        # key/value heads, each shared by a group
    n_layers: int = 30
    hidden_dim: int = 1536     # width of the SwiGLU feed-forward
    rope_base: float = 100_000.0  # sets the slowest rotary frequency
    norm_eps: float = 1e-5
    tie_weights: bool = True   # the output head is the embedding matrix
    fused_attention: bool = False  # True: F.scaled_dot_product_attention

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads",
                     "n_kv_heads", "n_layers", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim={self.emb_dim} must be divisible by "
                             f"n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be divisible by n_kv_heads="
                f"{self.n_kv_heads}, so that every key/value head serves "
                f"the same number of query heads")
        if self.head_dim % 2:
            raise ValueError(
                f"the head size emb_dim // n_heads = {self.head_dim} must "
                f"be even: rotary embeddings turn features in pairs")

    @classmethod
    def smollm2_135m(cls, **overrides) -> LlamaConfig:
        """SmolLM2-135M (base and Instruct), with optional overrides."""
        return cls(**overrides)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def replace(self, **changes) -> LlamaConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Closed-form parameter count of ``LlamaModel(self)``."""
        d, v = self.emb_dim, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv  # query, out; key, value
        feed_forward = 3 * d * self.hidden_dim  # gate, up, down
        block = attention + feed_forward + 2 * d  # two RMSNorm scales
        head = 0 if self.tie_weights else v * d
        return v * d + self.n_layers * block + d + head


class RMSNorm(nn.Module):
    """Divide each token's features by their root mean square, then scale.

    LayerNorm without the mean: no centring, no shift (Zhang and Sennrich,
    2019). Shape kept.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)
        return self.scale * x / torch.sqrt(mean_square + self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021): turn pairs of features.

    Feature ``i`` and feature ``i + head_dim/2`` form a pair, turned at
    position ``p`` by the angle ``p * base**(-2i/head_dim)``.
    ``forward(x, start_pos)`` rotates ``x`` of shape ``(batch, heads,
    tokens, head_dim)`` whose tokens sit at positions ``start_pos, ...``.
    """

    def __init__(self, head_dim: int, context_length: int,
                 base: float = 10_000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even, got {head_dim}")
        self.context_length = context_length
        steps = torch.arange(0, head_dim, 2, dtype=torch.int64).float()
        inv_freq = 1.0 / base ** (steps / head_dim)        # (hd/2,)
        positions = torch.arange(context_length).float()
        angles = positions[:, None] * inv_freq[None, :]    # (T, hd/2)
        angles = torch.cat([angles, angles], dim=-1)       # (T, hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        """(x1, x2) -> (-x2, x1): a quarter turn of every pair."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        num_tokens = x.shape[-2]
        _check_length(num_tokens, self.context_length, start_pos)
        end = start_pos + num_tokens
        cos = self.cos[start_pos:end].to(x.dtype)          # (T, hd)
        sin = self.sin[start_pos:end].to(x.dtype)
        return x * cos + self.rotate_half(x) * sin


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)) (Shazeer, 2020).

    ``(..., emb_dim) -> (..., emb_dim)`` through ``hidden_dim`` features.
    """

    def __init__(self, emb_dim: int, hidden_dim: int):
        super().__init__()
        self.gate = nn.Linear(emb_dim, hidden_dim, bias=False)
        self.up = nn.Linear(emb_dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GroupedQueryAttention(nn.Module):
    """Causal attention whose query heads share key/value heads in groups.

    ``(batch, tokens, d_in) -> (batch, tokens, d_out)``. With
    ``num_kv_heads == num_heads`` it is GPT-2's multi-head attention (plus
    rotary embeddings, minus biases); ``num_kv_heads == 1`` is multi-query
    attention. A ``LayerKVCache`` stores only the ``num_kv_heads`` heads.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int,
                 num_heads: int, num_kv_heads: int, rope: RotaryEmbedding,
                 fused: bool = False):
        super().__init__()
        if d_out % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"d_out={d_out} must be divisible by num_heads={num_heads}"
                f", and num_heads by num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_out // num_heads
        self.group_size = num_heads // num_kv_heads  # queries per key
        self.d_out, self.fused = d_out, fused
        kv_dim = num_kv_heads * self.head_dim
        self.W_query = nn.Linear(d_in, d_out, bias=False)
        self.W_key = nn.Linear(d_in, kv_dim, bias=False)
        self.W_value = nn.Linear(d_in, kv_dim, bias=False)
        self.out_proj = nn.Linear(d_out, d_out, bias=False)
        self.rope = rope  # one table, shared by every layer

    def _split_heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        b, num_tokens, _ = t.shape
        t = t.view(b, num_tokens, heads, self.head_dim)
        return t.transpose(1, 2)                     # (b, heads, T, hd)

    def _qkv(self, x: torch.Tensor, kv_cache: LayerKVCache | None):
        if x.dim() != 3:
            raise ValueError(f"expected input of shape (batch, tokens, "
                             f"d_in), got {tuple(x.shape)}")
        start = 0 if kv_cache is None else kv_cache.length
        q = self._split_heads(self.W_query(x), self.num_heads)
        k = self._split_heads(self.W_key(x), self.num_kv_heads)
        v = self._split_heads(self.W_value(x), self.num_kv_heads)
        q, k = self.rope(q, start), self.rope(k, start)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)        # (b, n_kv, start + T, hd)
        return q, k, v, start

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        # Each key/value head serves group_size neighbouring query heads.
        return t.repeat_interleave(self.group_size, dim=1)  # (b, nh, T, hd)

    def _weights(self, q: torch.Tensor, k: torch.Tensor,
                 start: int) -> torch.Tensor:
        k = self._repeat_kv(k)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        # Query i sits at position start + i and sees keys 0 .. start + i.
        num_queries, num_keys = scores.shape[-2:]
        future = torch.ones(num_queries, num_keys, dtype=torch.bool,
                            device=scores.device).triu(start + 1)
        return torch.softmax(scores.masked_fill(future, -torch.inf), dim=-1)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(batch, num_heads, tokens, tokens)``."""
        q, k, _, start = self._qkv(x, None)
        return self._weights(q, k, start)

    def forward(self, x: torch.Tensor,
                kv_cache: LayerKVCache | None = None) -> torch.Tensor:
        q, k, v, start = self._qkv(x, kv_cache)
        if self.fused:
            context = self._fused_context(q, k, v, start)
        else:
            weights = self._weights(q, k, start)         # (b, nh, T, Tk)
            context = weights @ self._repeat_kv(v)       # (b, nh, T, hd)
        b, _, num_tokens, _ = context.shape
        context = context.transpose(1, 2).reshape(b, num_tokens, self.d_out)
        return self.out_proj(context)

    def _fused_context(self, q, k, v, start: int) -> torch.Tensor:
        # One fused kernel (chapter 36) computing what _weights(...) @ v does;
        # it reads the shared heads in place, without the repeated copies.
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:  # torch < 2.5
            k, v, gqa = self._repeat_kv(k), self._repeat_kv(v), {}
        if start == 0:  # no cache: the square causal mask
            return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                  **gqa)
        if q.shape[-2] == 1:  # one new token sees every cached one
            return F.scaled_dot_product_attention(q, k, v, **gqa)
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool,
                             device=q.device).tril(start)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                              **gqa)


class LlamaBlock(nn.Module):
    """Pre-norm block, as GPT-2's: x + att(norm1(x)), then x + ff(norm2(x)).

    ``(batch, tokens, emb_dim)`` kept; no dropout.
    """

    def __init__(self, cfg: LlamaConfig, rope: RotaryEmbedding):
        super().__init__()
        self.att = GroupedQueryAttention(
            cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.n_heads,
            cfg.n_kv_heads, rope, fused=cfg.fused_attention)
        self.ff = SwiGLU(cfg.emb_dim, cfg.hidden_dim)
        self.norm1 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.emb_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor,
                kv_cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.att(self.norm1(x), kv_cache)
        return x + self.ff(self.norm2(x))


class LlamaModel(nn.Module):
    """Token ids ``(batch, tokens)`` -> logits ``(batch, tokens, vocab)``.

    No position table: positions enter through the rotary embedding in
    every attention layer.
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.context_length,
                                    cfg.rope_base)
        self.trf_blocks = nn.ModuleList(
            [LlamaBlock(cfg, self.rope) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def check_input(self, in_idx: torch.Tensor, start_pos: int = 0) -> None:
        """Raise a clear error unless ``in_idx`` holds valid token ids."""
        check_token_ids(in_idx, self.cfg.vocab_size,
                        self.cfg.context_length, start_pos)

    def new_kv_cache(self, max_tokens: int | None = None) -> KVCache:
        """An empty ``KVCache`` with room for ``max_tokens`` tokens."""
        return KVCache.for_model(self.cfg, max_tokens)

    def backbone(self, in_idx: torch.Tensor,
                 kv_cache: KVCache | None = None) -> torch.Tensor:
        """Ids ``(batch, tokens)`` -> last block's output, before the norm."""
        start = 0 if kv_cache is None else kv_cache.length
        self.check_input(in_idx, start)
        caches = ([None] * len(self.trf_blocks) if kv_cache is None
                  else kv_cache.layers_for(self.trf_blocks))
        x = self.tok_emb(in_idx)
        for block, layer_cache in zip(self.trf_blocks, caches, strict=True):
            x = block(x, layer_cache)
        return x

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and output head: ``(..., emb_dim) -> (..., vocab)``."""
        return self.out_head(self.final_norm(hidden))

    def forward(self, in_idx: torch.Tensor,
                kv_cache: KVCache | None = None,
                positions=None) -> torch.Tensor:
        hidden = self.backbone(in_idx, kv_cache)
        return self.head(select_positions(hidden, positions))

    @torch.no_grad()
    def attention_weights(self, in_idx: torch.Tensor) -> torch.Tensor:
        """All blocks' weights ``(n_layers, batch, heads, tokens, tokens)``."""
        self.check_input(in_idx)
        x, weights = self.tok_emb(in_idx), []
        for block in self.trf_blocks:
            weights.append(block.att.attention_weights(block.norm1(x)))
            x = block(x)
        return torch.stack(weights)
