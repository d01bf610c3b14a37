"""LoRA, low-rank adaptation (Hu et al., 2021), written out: finetuning a few
small matrices instead of every weight of a pretrained model (chapter 34).

A frozen ``nn.Linear`` computes ``W x``. LoRA adds ``(alpha / rank) B A x``
with ``A`` of shape ``(rank, in)`` and ``B`` of shape ``(out, rank)``, and
trains only ``A`` and ``B``. ``B`` starts at zero, so the adapted model starts
out computing exactly what the pretrained one did. After training,
``merge_lora`` folds ``B A`` into ``W``: a plain model again, with the same
outputs and no extra cost per token.

``tests/test_lora.py`` checks this module against Hugging Face ``peft`` with
the same matrices.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "add_lora", "merge_lora", "lora_state_dict",
           "GPT_LORA_TARGETS"]

# Hu et al. adapt the query and value projections; so do we by default.
GPT_LORA_TARGETS = ("W_query", "W_value")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update:
    ``base(x) + (alpha / rank) * B(A(x))``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float,
                 dropout: float = 0.0):
        super().__init__()
        _check_lora_args(base, rank, alpha, dropout)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        # nn.Linear's own initialisation for A; B = 0, so the update
        # starts at zero and the model is unchanged until B learns.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        self.dropout = nn.Dropout(dropout)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / rank) B A``, shaped like ``base.weight``."""
        return self.scaling * (self.B @ self.A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.A.T @ self.B.T
        return self.base(x) + self.scaling * update


def _check_lora_args(base, rank, alpha, dropout) -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"LoRA adapts an nn.Linear, got {type(base).__name__}")
    limit = min(base.in_features, base.out_features)
    if not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an integer in [1, {limit}] for a "
                         f"{base.in_features} -> {base.out_features} layer, "
                         f"got {rank!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)
            and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one name (tied)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16,
             targets=GPT_LORA_TARGETS, dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of ``model`` and wrap each ``nn.Linear`` whose
    name ends in one of ``targets`` in a ``LoRALinear``, in place.

    Returns the names of the wrapped layers. Only the new ``A`` and ``B``
    matrices are trainable afterwards.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; merge_lora() "
                         "them first, or start from the pretrained model")
    tied = _shared_weights(model)
    chosen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            if id(module.weight) in tied:
                raise ValueError(f"{name}'s weight is tied to another "
                                 f"parameter; merging an update into it "
                                 f"would change both, so leave it out")
            chosen.append(name)
    if not chosen:
        linear = sorted({name.split(".")[-1] for name, m
                         in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named {list(targets)} in the model; "
                         f"its linear layers are named {linear}")
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, LoRALinear(base, rank, alpha, dropout))
    return chosen


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every ``LoRALinear``'s update into its base weight and put the
    plain ``nn.Linear`` back, in place; returns the model.

    The merged model computes what the adapted one did (dropout off), has
    the pretrained model's parameter names, and costs nothing extra.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.base.weight += module.delta_weight().to(
                module.base.weight.dtype)
            if not name:  # the model is itself one adapted layer
                return module.base
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.base)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' ``A`` and ``B`` matrices: what finetuning changed,
    a small file beside the pretrained weights."""
    return {name: p.detach() for name, p in model.named_parameters()
            if isinstance(model.get_submodule(name.rpartition(".")[0]),
                          LoRALinear)
            and name.rpartition(".")[2] in ("A", "B")}
