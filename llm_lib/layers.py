"""The pieces of a GPT-2 transformer block (chapters 20-23)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import LayerKVCache, MultiHeadAttention

__all__ = ["LayerNorm", "GELU", "FeedForward", "FusedLayerNorm", "FusedGELU", "layer_norm", "feed_forward",
           "TransformerBlock"]


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then
    scale and shift them; the shape is kept (chapter 20)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps  # keeps the division finite for constant rows
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        # Biased variance (divide by n), as torch.nn.LayerNorm and GPT-2 use.
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class GELU(nn.Module):
    """GELU in GPT-2's tanh approximation (chapter 21):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))
        return 0.5 * x * (1.0 + torch.tanh(inner))


class FeedForward(nn.Module):
    """Position-wise MLP emb_dim -> hidden_dim -> emb_dim with GELU between;
    hidden_dim defaults to 4 * emb_dim (chapter 21)."""

    def __init__(self, emb_dim: int, hidden_dim: int | None = None,
                 activation: nn.Module | None = None):
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.layers = nn.Sequential(
            nn.Linear(emb_dim, hidden_dim),
            activation if activation is not None else GELU(),
            nn.Linear(hidden_dim, emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# The fast path (chapter 36): the same functions, each one PyTorch kernel
# instead of the several operations above. Same parameters, so the weights
# of one load into the other.


class FusedLayerNorm(LayerNorm):
    """``LayerNorm`` computed by ``F.layer_norm``, one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift,
                            self.eps)


class FusedGELU(GELU):
    """``GELU`` computed by ``F.gelu(x, approximate="tanh")``, one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def layer_norm(emb_dim: int, fused: bool = False) -> LayerNorm:
    """A ``LayerNorm``, or with ``fused=True`` its one-kernel twin."""
    return FusedLayerNorm(emb_dim) if fused else LayerNorm(emb_dim)


def feed_forward(emb_dim: int, fused: bool = False) -> FeedForward:
    """A ``FeedForward`` whose GELU is fused with ``fused=True``."""
    return FeedForward(emb_dim, activation=FusedGELU() if fused else GELU())


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
        self.ff = feed_forward(cfg.emb_dim, fused)
        self.norm1 = layer_norm(cfg.emb_dim, fused)
        self.norm2 = layer_norm(cfg.emb_dim, fused)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor,
                kv_cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv_cache))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x
