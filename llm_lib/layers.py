"""The pieces of a GPT-2 transformer block (chapters 20-23)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import LayerKVCache, MultiHeadAttention

__all__ = ["LayerNorm", "GELU", "FeedForward", "TransformerBlock"]


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift: shape kept.

    ``fused=True`` computes the same function with ``F.layer_norm``, one kernel instead of
    the six operations below (chapter 36).
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        self.eps = eps  # keeps the division finite when a token's features are all equal
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)
        mean = x.mean(dim=-1, keepdim=True)
        # Biased variance (divide by n), as torch.nn.LayerNorm and GPT-2 use.
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    """GELU activation in GPT-2's tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    ``fused=True`` computes it with ``F.gelu(x, approximate="tanh")``, one kernel (chapter 36).
    """

    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.gelu(x, approximate="tanh")
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class FeedForward(nn.Module):
    """Position-wise MLP ``emb_dim -> hidden_dim -> emb_dim`` with GELU; hidden_dim defaults to 4·emb_dim."""

    def __init__(self, emb_dim: int, hidden_dim: int | None = None, fused: bool = False):
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.layers = nn.Sequential(
            nn.Linear(emb_dim, hidden_dim), GELU(fused), nn.Linear(hidden_dim, emb_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + drop(att(norm1(x))), then + drop(ff(norm2(x))); ``(b, T, emb_dim)`` kept.

    ``cfg`` is a ``GPTConfig`` (or anything with its attribute names).
    ``forward(x, kv_cache)`` passes a ``LayerKVCache`` to the attention (chapter 36).
    """

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg.emb_dim, d_out=cfg.emb_dim, context_length=cfg.context_length,
            dropout=cfg.drop_rate, num_heads=cfg.n_heads, qkv_bias=cfg.qkv_bias,
            fused=getattr(cfg, "fused_attention", False),
        )
        fused = getattr(cfg, "fused_layers", False)
        self.ff = FeedForward(cfg.emb_dim, fused=fused)
        self.norm1 = LayerNorm(cfg.emb_dim, fused=fused)
        self.norm2 = LayerNorm(cfg.emb_dim, fused=fused)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor,
                kv_cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv_cache))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x
