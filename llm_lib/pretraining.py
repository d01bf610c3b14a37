"""The book's pretraining run (chapter 28), cached so that later chapters reuse its weights.

A ``PretrainRecipe`` names everything that determines the run; ``pretrain``
carries it out with ``train.train_model_simple``; ``load_or_pretrain`` returns
the cached result, training only when no checkpoint for the recipe exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .checkpoints import load_or_train, recipe_hash
from .fast import FastGPTModel
from .model import GPTConfig
from .tokenizer import get_gpt2_encoding
from .train import train_model_simple

__all__ = ["PretrainRecipe", "pretrain", "load_or_pretrain"]


_CFG_FIELDS_OF_CHAPTER_28 = frozenset({"vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                                       "drop_rate", "qkv_bias", "fused_attention", "tie_weights"})


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines a pretraining run; equal recipes give the same weights on one machine."""

    cfg: GPTConfig = field(default_factory=lambda: GPTConfig.gpt2("small", context_length=256))
    seed: int = 123
    dataset: str = "the-verdict.txt"
    train_ratio: float = 0.9
    batch_size: int = 2
    num_epochs: int = 10
    lr: float = 4e-4
    weight_decay: float = 0.1
    eval_every: int = 5
    eval_batches: int = 5
    prompt: str = "Every effort moves you"

    def key(self) -> str:
        """A short hash of the recipe, used in the checkpoint's file name.

        Config fields added after chapter 28 enter the hash only when they differ
        from their defaults, so adding an option does not orphan cached weights.
        """
        fields = dataclasses.asdict(self)
        defaults = dataclasses.asdict(GPTConfig())
        fields["cfg"] = {name: value for name, value in fields["cfg"].items()
                         if name in _CFG_FIELDS_OF_CHAPTER_28 or value != defaults[name]}
        return recipe_hash(fields)

    def loaders(self, tokenizer=None):
        """(train, validation) loaders: the dataset split at ``train_ratio``, windows of the context length."""
        from .data import create_dataloader
        from .data_sources import load_text

        text = load_text(self.dataset)
        split = int(self.train_ratio * len(text))
        common = dict(batch_size=self.batch_size, max_length=self.cfg.context_length,
                      stride=self.cfg.context_length, tokenizer=tokenizer)
        train = create_dataloader(text[:split], shuffle=True, drop_last=True, seed=self.seed, **common)
        val = create_dataloader(text[split:], shuffle=False, drop_last=False, **common)
        return train, val


def pretrain(recipe: PretrainRecipe, device="cpu", progress: bool = True, verbose: bool = True):
    """Run ``recipe`` from a seeded random model; returns ``(model, TrainingHistory)``."""
    tokenizer = get_gpt2_encoding()
    torch.manual_seed(recipe.seed)
    model = FastGPTModel(recipe.cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    train_loader, val_loader = recipe.loaders(tokenizer)
    history = train_model_simple(
        model, train_loader, val_loader, optimizer, num_epochs=recipe.num_epochs,
        eval_every=recipe.eval_every, eval_batches=recipe.eval_batches, device=device,
        prompt=recipe.prompt, tokenizer=tokenizer, progress=progress, verbose=verbose)
    return model, history


def load_or_pretrain(recipe: PretrainRecipe | None = None, device="cpu", progress: bool = True,
                     verbose: bool = False, retrain: bool = False):
    """The model trained by ``recipe`` (chapter 28's run by default), loaded from the cache or trained now.

    Returns ``(model, TrainingHistory)`` with the model in eval mode. ``verbose`` prints
    the training log (losses, a sample per epoch) when training happens;
    ``retrain`` trains even if a checkpoint exists. A lock file makes
    concurrent callers (two notebooks run in parallel) wait for one training
    run instead of each starting their own.
    """
    return load_or_train(recipe or PretrainRecipe(), pretrain, device, progress, verbose, retrain)
