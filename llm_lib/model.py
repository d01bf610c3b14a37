"""GPT-2 as a PyTorch module (chapters 19 and 24)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .layers import LayerNorm, TransformerBlock

__all__ = ["GPTConfig", "GPTModel", "count_parameters", "load_state_dict_checked", "GPT2_SIZES"]

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
    tie_weights: bool = False    # True: the output head shares the token-embedding matrix

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
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

    def replace(self, **changes) -> GPTConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def num_parameters(self, tied: bool | None = None) -> int:
        """Closed-form parameter count of ``GPTModel(self)``; ``tied`` counts the output head once."""
        tied = self.tie_weights if tied is None else tied
        d, v = self.emb_dim, self.vocab_size
        attention = 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d
        feed_forward = d * 4 * d + 4 * d + 4 * d * d + d
        block = attention + feed_forward + 2 * 2 * d  # two LayerNorms: scale and shift
        embeddings = v * d + self.context_length * d
        head = 0 if tied else v * d
        return embeddings + self.n_layers * block + 2 * d + head


class GPTModel(nn.Module):
    """GPT-2: token ids ``(batch, tokens)`` -> next-token logits ``(batch, tokens, vocab_size)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def check_input(self, in_idx: torch.Tensor) -> None:
        """Raise a clear error if ``in_idx`` is not a ``(batch, tokens)`` tensor of valid ids."""
        if in_idx.dim() != 2:
            raise ValueError(
                f"expected token ids of shape (batch, tokens), got {tuple(in_idx.shape)}; "
                f"add a batch dimension with ids.unsqueeze(0)"
            )
        if in_idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be integers, got {in_idx.dtype}")
        num_tokens = in_idx.shape[1]
        if num_tokens > self.cfg.context_length:
            raise ValueError(
                f"input has {num_tokens} tokens but the model's context_length is "
                f"{self.cfg.context_length}; keep only the last {self.cfg.context_length} tokens"
            )
        if in_idx.numel() and (in_idx.min() < 0 or in_idx.max() >= self.cfg.vocab_size):
            bad = in_idx.max().item() if in_idx.max() >= self.cfg.vocab_size else in_idx.min().item()
            raise ValueError(
                f"token id {bad} is outside the vocabulary: ids must lie in "
                f"[0, {self.cfg.vocab_size}) for vocab_size={self.cfg.vocab_size}"
            )

    def embed(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings ``(batch, tokens, emb_dim)``, before dropout."""
        self.check_input(in_idx)
        positions = torch.arange(in_idx.shape[1], device=in_idx.device)
        return self.tok_emb(in_idx) + self.pos_emb(positions)

    @torch.no_grad()
    def attention_weights(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Every block's attention weights ``(n_layers, batch, n_heads, tokens, tokens)``, dropout off."""
        was_training = self.training
        self.eval()
        try:
            x = self.embed(in_idx)
            weights = []
            for block in self.trf_blocks:
                weights.append(block.att.attention_weights(block.norm1(x)))
                x = block(x)
        finally:
            self.train(was_training)
        return torch.stack(weights)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        x = self.drop_emb(self.embed(in_idx))
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)


def count_parameters(model: nn.Module, tied: bool = False) -> int:
    """Number of parameters in ``model``; ``tied=True`` counts a GPT's output head as shared with tok_emb.

    Parameters that are already the same tensor are counted once either way.
    """
    total = sum(p.numel() for p in model.parameters())
    if tied and hasattr(model, "out_head") and model.out_head.weight is not model.tok_emb.weight:
        total -= model.out_head.weight.numel()
    return total


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """``model.load_state_dict`` that names the parameter when a key is missing, extra or the wrong shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{source} has {key} of shape {tuple(tensor.shape)}, but the model's {key} "
                f"has shape {tuple(expected[key].shape)}; was it saved from a different configuration?"
            )
    model.load_state_dict(state_dict)
