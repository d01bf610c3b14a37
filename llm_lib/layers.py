"""The pieces of a GPT-2 transformer block (chapters 20-23), and chapter 36's
faster twins of them: ``FusedLayerNorm``, ``FusedGELU`` (``fuse_layers``
swaps them in) and ``cached_block``, a block's forward with a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import LayerKVCache, MultiHeadAttention, cached_attention

__all__ = ["LayerNorm", "GELU", "FeedForward", "TransformerBlock",
           "FusedLayerNorm", "FusedGELU", "fuse_layers", "cached_block"]


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


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block (chapter 23): x + drop(att(norm1(x))), then
    x + drop(ff(norm2(x))); the shape (batch, tokens, emb_dim) is kept.
    ``cfg`` is a ``GPTConfig``."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg.emb_dim, d_out=cfg.emb_dim,
            context_length=cfg.context_length, dropout=cfg.drop_rate,
            num_heads=cfg.n_heads, qkv_bias=cfg.qkv_bias)
        self.ff = FeedForward(cfg.emb_dim)
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each sub-layer reads a normalised copy of the residual stream x
        # and adds its result back to it.
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


# --- The fast path (chapter 36) ---------------------------------------------
# The same functions, each one PyTorch kernel instead of the several
# operations above. Same parameters, so the weights of one load into the other.


class FusedLayerNorm(LayerNorm):
    """``LayerNorm`` computed by ``F.layer_norm``, one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift,
                            self.eps)


class FusedGELU(GELU):
    """``GELU`` computed by ``F.gelu(x, approximate="tanh")``, one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def fuse_layers(module: nn.Module) -> nn.Module:
    """Swap every ``LayerNorm`` and ``GELU`` inside ``module`` for its
    one-kernel twin, in place, keeping the parameters; returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is LayerNorm:
                fused = FusedLayerNorm(child.scale.shape[0], child.eps)
                fused.scale, fused.shift = child.scale, child.shift
                setattr(parent, name, fused)
            elif type(child) is GELU:
                setattr(parent, name, FusedGELU())
    return module


def cached_block(block: TransformerBlock, x: torch.Tensor,
                 kv_cache: LayerKVCache | None = None,
                 fused_attention: bool = False) -> torch.Tensor:
    """``block(x)`` through chapter 36's ``cached_attention``: ``x`` are the
    tokens that follow those in ``kv_cache``."""
    attended = cached_attention(block.att, block.norm1(x), kv_cache,
                                fused_attention)
    x = x + block.drop_shortcut(attended)
    x = x + block.drop_shortcut(block.ff(block.norm2(x)))
    return x
