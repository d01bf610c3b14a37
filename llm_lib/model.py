"""GPT-2 as a PyTorch module (chapters 19 and 24), and its fast path (chapter 36).

``GPTModel`` is the model as chapter 24 builds it. ``llm_lib.fast.FastGPTModel``
is the same model with chapter 36's additions (a KV cache, the output head at
chosen positions only, fused kernels, a padded vocabulary); the library's
loaders and training recipes build that one, with every switch off unless
asked for.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator

import torch
from torch import nn

from .config import GPT2_SIZES, GPTConfig
from .layers import LayerNorm, TransformerBlock

__all__ = [
    "GPTConfig",
    "GPTModel",
    "check_token_ids",
    "count_parameters",
    "eval_mode",
    "autocast_context",
    "logits_at",
    "select_positions",
    "init_gpt2_weights",
    "load_state_dict_checked",
    "GPT2_SIZES",
]

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (no dropout) for the body of a ``with``, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)


def check_autocast_dtype(dtype) -> None:
    """A clear error unless ``dtype`` is one that ``autocast_context`` supports."""
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {dtype}")


def autocast_context(device="cpu", dtype: torch.dtype | None = None):
    """``torch.autocast`` for ``device`` in ``dtype``, or a context that changes nothing when ``dtype`` is None."""
    check_autocast_dtype(dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def select_positions(hidden: torch.Tensor, positions=None) -> torch.Tensor:
    """The hidden states ``(batch, tokens, d)`` at chosen positions, so the output head runs only there.

    ``positions`` is one of:

    - ``None``: every position, ``(batch, tokens, d)``;
    - an int, the same position in every row (``-1``: the last), ``(batch, d)``;
    - a 1-D integer tensor, one position per row (the last real token of a
      right-padded row, say), ``(batch, d)``;
    - a boolean mask ``(batch, tokens)``, the positions where it is True, in
      row-major order, ``(count, d)``.
    """
    if positions is None:
        return hidden
    batch, tokens = hidden.shape[:2]
    if isinstance(positions, int):
        if not -tokens <= positions < tokens:
            raise ValueError(f"position {positions} is outside a sequence of {tokens} tokens")
        return hidden[:, positions]
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be None, an int or a tensor, got {type(positions).__name__}")
    positions = positions.to(hidden.device)
    if positions.dtype == torch.bool:
        if positions.shape != (batch, tokens):
            raise ValueError(f"a boolean positions mask must have the ids' shape {(batch, tokens)}, "
                             f"got {tuple(positions.shape)}")
        return hidden[positions]
    if positions.dim() != 1 or positions.shape[0] != batch or positions.is_floating_point():
        raise ValueError(f"positions must hold one integer position per row ({batch}), "
                         f"got shape {tuple(positions.shape)} of {positions.dtype}")
    if not _is_compiling() and (positions.min() < -tokens or positions.max() >= tokens):
        raise ValueError(f"positions {positions.tolist()} lie outside a sequence of {tokens} tokens")
    return hidden[torch.arange(batch, device=hidden.device), positions]


def logits_at(model, ids: torch.Tensor, positions) -> torch.Tensor:
    """The logits of ``model(ids)`` at ``positions`` (any form ``select_positions`` takes).

    llm_lib's models take ``positions`` themselves and run their output head
    there alone. Any other model, such as a toy one written in a chapter that
    maps ids to logits ``(batch, tokens, vocab)``, runs in full, and its logits
    are selected afterwards: the same numbers, at the cost of the whole head.
    """
    if _takes_positions(model):
        return model(ids, positions=positions)
    return select_positions(model(ids), positions)


def _takes_positions(model) -> bool:
    forward = model.forward if isinstance(model, nn.Module) else model
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == "positions" or p.kind is p.VAR_KEYWORD for p in params)


def _is_compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def check_token_ids(in_idx: torch.Tensor, vocab_size: int, context_length: int, start_pos: int = 0) -> None:
    """Raise a clear error unless ``in_idx`` is a ``(batch, tokens)`` integer tensor of ids in the vocabulary.

    ``start_pos`` is the number of tokens already in a KV cache before these;
    together they must fit in ``context_length``.
    """
    if in_idx.dim() != 2:
        raise ValueError(
            f"expected token ids of shape (batch, tokens), got {tuple(in_idx.shape)}; "
            f"add a batch dimension with ids.unsqueeze(0)"
        )
    if in_idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token ids must be integers, got {in_idx.dtype}")
    num_tokens = in_idx.shape[1]
    if num_tokens == 0:
        raise ValueError(
            f"got an empty sequence of token ids, shape {tuple(in_idx.shape)}: the model needs at least "
            f"one token to predict the next one (start from a prompt, or from <|endoftext|>)"
        )
    if start_pos + num_tokens > context_length:
        if start_pos:
            raise ValueError(
                f"the KV cache holds {start_pos} tokens and the input adds {num_tokens}, more than "
                f"the model's context_length of {context_length}; start a new cache "
                f"with the last tokens"
            )
        raise ValueError(
            f"input has {num_tokens} tokens but the model's context_length is "
            f"{context_length}; keep only the last {context_length} tokens"
        )
    # Reading min/max waits for the device and breaks a torch.compile graph; compiled code skips it.
    if in_idx.numel() and not _is_compiling() and (in_idx.min() < 0 or in_idx.max() >= vocab_size):
        bad = in_idx.max().item() if in_idx.max() >= vocab_size else in_idx.min().item()
        raise ValueError(
            f"token id {bad} is outside the vocabulary: ids must lie in "
            f"[0, {vocab_size}) for vocab_size={vocab_size}"
        )


class GPTModel(nn.Module):
    """GPT-2 (chapter 24): token ids (batch, tokens) -> next-token logits
    (batch, tokens, vocab_size). ``cfg`` is a ``GPTConfig``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.check_config(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(
            *[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_weights:  # GPT-2's choice: one matrix at both ends
            self.out_head.weight = self.tok_emb.weight

    def embed(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings (batch, tokens, emb_dim)."""
        self.check_input(in_idx)
        positions = torch.arange(in_idx.shape[1], device=in_idx.device)
        return self.tok_emb(in_idx) + self.pos_emb(positions)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        x = self.drop_emb(self.embed(in_idx))  # (batch, tokens, emb_dim)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # (batch, tokens, vocab_size)

    def check_input(self, in_idx: torch.Tensor) -> None:
        """A clear error unless in_idx is (batch, tokens) of valid ids."""
        check_token_ids(in_idx, self.cfg.vocab_size,
                        self.cfg.context_length)

    def check_config(self, cfg: GPTConfig) -> None:
        """A clear error if cfg asks for chapter 36's switches."""
        on = [name for name, off in _FAST_SWITCHES.items()
              if getattr(cfg, name) != off]
        if on:
            raise ValueError(f"{', '.join(on)} belong to chapter 36's fast "
                             f"path: build FastGPTModel(cfg) instead")

    @torch.no_grad()
    def attention_weights(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Every block's attention weights, dropout off:
        (n_layers, batch, n_heads, tokens, tokens)."""
        with eval_mode(self):
            x = self.embed(in_idx)
            weights = []
            for block in self.trf_blocks:
                weights.append(block.att.attention_weights(block.norm1(x)))
                x = block(x)
        return torch.stack(weights)


_FAST_SWITCHES = {"fused_attention": False, "fused_layers": False,
                  "vocab_pad_multiple": 1}


@torch.no_grad()
def init_gpt2_weights(model: GPTModel, std: float = 0.02) -> GPTModel:
    """GPT-2's initialisation, in place: weights N(0, std²), the two residual projections std/√(2·n_layers), biases 0.

    PyTorch's defaults give ``nn.Embedding`` rows of variance 1: an output head
    tied to them (``tie_weights=True``) starts with logits of size about
    √emb_dim, and a loss far above ln(vocab_size). Radford et al. (2019) scale
    the projections that add into the residual stream by 1/√N for N of them.
    Returns the model.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.scale)
            nn.init.zeros_(module.shift)
    residual_std = std / math.sqrt(2 * len(model.trf_blocks))
    for block in model.trf_blocks:
        nn.init.normal_(block.att.out_proj.weight, mean=0.0, std=residual_std)
        nn.init.normal_(block.ff.layers[2].weight, mean=0.0, std=residual_std)
    vocab = model.cfg.vocab_size
    model.tok_emb.weight[vocab:].zero_()  # padding rows, if any
    model.out_head.weight[vocab:].zero_()
    return model


def count_parameters(model: nn.Module, tied: bool = False) -> int:
    """Number of parameters in ``model``; ``tied=True`` counts a GPT's output head as shared with tok_emb.

    Parameters that are already the same tensor are counted once either way.
    """
    total = sum(p.numel() for p in model.parameters())
    if tied and hasattr(model, "out_head") and model.out_head.weight is not model.tok_emb.weight:
        total -= model.out_head.weight.numel()
    return total


def load_state_dict_checked(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """``model.load_state_dict`` that names the parameter when a key is missing, extra or the wrong shape.

    A model whose output head is tied to its token embedding refuses a checkpoint
    in which the two matrices differ (loading would silently keep only one).
    """
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
    tied = getattr(getattr(model, "out_head", None), "weight", None)
    if (tied is not None and tied is getattr(getattr(model, "tok_emb", None), "weight", None)
            and "out_head.weight" in state_dict and "tok_emb.weight" in state_dict
            and not torch.equal(state_dict["out_head.weight"], state_dict["tok_emb.weight"])):
        raise ValueError(
            f"{source} has an out_head.weight that differs from its tok_emb.weight, but the model ties "
            f"the two (tie_weights=True); build the model with tie_weights=False to load it"
        )
    model.load_state_dict(state_dict)
