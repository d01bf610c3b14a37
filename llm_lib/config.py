"""GPT-2's configuration (chapters 19 and 24): sizes, context, dropout, and the fast path's switches.

``GPTConfig`` is importable from ``llm_lib.model`` too, where the chapters
import it with ``GPTModel``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["GPT2_SIZES", "GPTConfig"]


# (emb_dim, n_heads, n_layers) of OpenAI's four released GPT-2 models.
GPT2_SIZES = {
    "small": (768, 12, 12),     # 124M
    "medium": (1024, 16, 24),   # 355M
    "large": (1280, 20, 36),    # 774M
    "xl": (1600, 25, 48),       # 1558M
}


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of a GPT model; ``GPTConfig.gpt2("small")`` is the 124M GPT-2."""

    vocab_size: int = 50257      # GPT-2's BPE: 256 bytes + 50,000 merges + <|endoftext|>
    context_length: int = 1024   # longest sequence the position embedding covers
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False       # OpenAI's checkpoints have these biases; we start without
    fused_attention: bool = False  # True: F.scaled_dot_product_attention instead of the explicit path
    fused_layers: bool = False   # True: F.layer_norm and F.gelu(approximate="tanh") instead of the formulas
    tie_weights: bool = False    # True: the output head shares the token-embedding matrix
    vocab_pad_multiple: int = 1  # e.g. 64: embedding and head get padded_vocab_size rows (50,304 for GPT-2)

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "vocab_pad_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"emb_dim={self.emb_dim} must be divisible by n_heads={self.n_heads}"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")

    @classmethod
    def gpt2(cls, size: str = "small", **overrides) -> GPTConfig:
        """One of GPT-2's four sizes ("small", "medium", "large", "xl"), with optional overrides."""
        if size not in GPT2_SIZES:
            raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {list(GPT2_SIZES)}")
        emb_dim, n_heads, n_layers = GPT2_SIZES[size]
        return cls(emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers, **overrides)

    @property
    def padded_vocab_size(self) -> int:
        """``vocab_size`` rounded up to a multiple of ``vocab_pad_multiple`` (rows of tok_emb and out_head)."""
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    def replace(self, **changes) -> GPTConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def num_parameters(self, tied: bool | None = None) -> int:
        """Closed-form parameter count of ``GPTModel(self)``; ``tied`` counts the output head once.

        Padding rows (``vocab_pad_multiple``) are counted: they are parameters of the model.
        """
        tied = self.tie_weights if tied is None else tied
        d, v = self.emb_dim, self.padded_vocab_size
        attention = 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d
        feed_forward = d * 4 * d + 4 * d + 4 * d * d + d
        block = attention + feed_forward + 2 * 2 * d  # two LayerNorms: scale and shift
        embeddings = v * d + self.context_length * d
        head = 0 if tied else v * d
        return embeddings + self.n_layers * block + 2 * d + head
