"""The book's instruction-finetuning run (chapter 34), cached so that chapter 35 reuses its model.

``InstructionRecipe`` fixes a whole finetuning run and ``load_or_finetune``
returns its model, trained once per machine and cached (with a file lock, as
``llm_lib.pretraining.load_or_pretrain`` does); ``load_or_generate_responses``
caches the model's answers to the test split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..fast import FastGPTModel
from ..model import GPT2_SIZES, GPTConfig
from .common import train_val_test_split
from .instruct import (
    InstructionDataset,
    LengthGroupedBatchSampler,
    generate_responses,
    instruction_collate,
    load_instruction_data,
    load_responses,
    save_responses,
    train_instruction_model,
)

__all__ = [
    "InstructionRecipe",
    "finetune",
    "load_or_finetune",
    "responses_path",
    "load_or_generate_responses",
]


def _small_gpt() -> GPTConfig:
    return GPTConfig(context_length=256, emb_dim=128, n_heads=4, n_layers=4, drop_rate=0.0, tie_weights=True)


@dataclass(frozen=True)
class InstructionRecipe:
    """Everything that determines a finetuning run; equal recipes give the same weights on one machine.

    ``base=None`` starts from a random model built from ``cfg`` (seeded);
    ``base="small"``/``"medium"``/... starts from OpenAI's GPT-2 weights of that
    size (``InstructionRecipe.gpt2(size)`` fills in the matching ``cfg``; the
    download needs a network). The data set is split ``train_frac`` /
    ``val_frac`` / rest with ``seed``.
    """

    cfg: GPTConfig = field(default_factory=_small_gpt)
    base: str | None = None
    seed: int = 123
    dataset: str = "instruction-data.json"
    train_frac: float = 0.85
    val_frac: float = 0.05
    batch_size: int = 8
    num_epochs: int = 6
    lr: float = 1e-3
    weight_decay: float = 0.1
    mask_prompt: bool = True
    allowed_max_length: int | None = None  # None: the model's context length
    eval_every: int = 20

    def __post_init__(self):
        if self.base is not None:
            if self.base not in GPT2_SIZES:
                raise ValueError(f"base must be None (random start) or a GPT-2 size {list(GPT2_SIZES)}, "
                                 f"got {self.base!r}")
            emb_dim, n_heads, n_layers = GPT2_SIZES[self.base]
            c = self.cfg
            if (c.emb_dim, c.n_heads, c.n_layers, c.context_length, c.qkv_bias) != (
                    emb_dim, n_heads, n_layers, 1024, True):
                raise ValueError(f"base={self.base!r} needs cfg=GPTConfig.gpt2({self.base!r}, qkv_bias=True) "
                                 f"with context_length 1024; use InstructionRecipe.gpt2({self.base!r})")
        if self.batch_size < 1 or self.num_epochs < 1 or self.eval_every < 1:
            raise ValueError("batch_size, num_epochs and eval_every must be at least 1")
        if self.allowed_max_length is not None and not 1 <= self.allowed_max_length <= self.cfg.context_length:
            raise ValueError(f"allowed_max_length must be in 1..{self.cfg.context_length} (the context length) "
                             f"or None, got {self.allowed_max_length}")

    @classmethod
    def gpt2(cls, size: str = "medium", **overrides) -> InstructionRecipe:
        """Finetune OpenAI's GPT-2 of ``size`` (all weights): lr 5e-5, 2 epochs, unless overridden."""
        cfg = GPTConfig.gpt2(size, context_length=1024, qkv_bias=True, drop_rate=0.0, tie_weights=True)
        settings = dict(cfg=cfg, base=size, lr=5e-5, num_epochs=2, eval_every=5)
        settings.update(overrides)
        return cls(**settings)

    def replace(self, **changes) -> InstructionRecipe:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """A short hash of the recipe, used in the checkpoint's file name.

        Config fields enter it only when they differ from ``GPTConfig``'s
        defaults, so a new model option (off by default) keeps cached weights.
        """
        fields = dataclasses.asdict(self)
        defaults = dataclasses.asdict(GPTConfig())
        fields["cfg"] = {name: value for name, value in fields["cfg"].items() if value != defaults.get(name)}
        from ..checkpoints import recipe_hash

        return recipe_hash(fields)

    def splits(self) -> tuple[list[dict], list[dict], list[dict]]:
        """``(train, val, test)`` entries of the data set."""
        return train_val_test_split(load_instruction_data(self.dataset), self.train_frac, self.val_frac, self.seed)

    def collate(self, batch):
        """``instruction_collate`` with this recipe's prompt masking and maximum length."""
        return instruction_collate(batch, mask_prompt=self.mask_prompt,
                                   allowed_max_length=self.allowed_max_length or self.cfg.context_length)

    def loaders(self, tokenizer=None) -> tuple[DataLoader, DataLoader]:
        """(train, validation) loaders: length-grouped batches, shuffled for training, shortest first for validation."""
        from ..tokenizer import get_gpt2_encoding

        tokenizer = tokenizer or get_gpt2_encoding()
        train, val, _ = self.splits()
        loaders = []
        for entries, shuffle in ((train, True), (val, False)):
            dataset = InstructionDataset(entries, tokenizer)
            sampler = LengthGroupedBatchSampler(dataset.lengths, self.batch_size, shuffle=shuffle, seed=self.seed)
            loaders.append(DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collate))
        return loaders[0], loaders[1]

    def build_model(self, device="cpu") -> FastGPTModel:
        """The starting model: seeded random from ``cfg``, or OpenAI's GPT-2 weights when ``base`` is set."""
        torch.manual_seed(self.seed)
        model = FastGPTModel(self.cfg)
        if self.base is None:
            # GPT-2's initialisation of the embeddings, N(0, 0.02): nn.Embedding's N(0, 1) would make the
            # tied output head's first logits so large that the loss starts far above ln(vocab_size)
            torch.nn.init.normal_(model.tok_emb.weight, std=0.02)
            torch.nn.init.normal_(model.pos_emb.weight, std=0.02)
        else:
            from ..weights import download_gpt2, load_gpt2_weights

            load_gpt2_weights(model, download_gpt2(self.base))
        return model.to(device)


def finetune(recipe: InstructionRecipe, device="cpu", progress: bool = True, verbose: bool = True):
    """Run ``recipe``: build its starting model and train it with AdamW; returns ``(model, TrainingHistory)``."""
    model = recipe.build_model(device)
    train_loader, val_loader = recipe.loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    torch.manual_seed(recipe.seed)
    history = train_instruction_model(model, train_loader, val_loader, optimizer, num_epochs=recipe.num_epochs,
                                      eval_every=recipe.eval_every, device=device, progress=progress,
                                      verbose=verbose)
    return model, history


def load_or_finetune(recipe: InstructionRecipe | None = None, device="cpu", progress: bool = True,
                     verbose: bool = False, retrain: bool = False):
    """The model finetuned by ``recipe`` (chapter 34's run by default), loaded from the cache or trained now.

    Returns ``(model, history)`` with the model in eval mode; the cache is
    ``llm_lib.checkpoints.checkpoint_path(recipe)``. ``verbose`` prints the training
    log when training happens; ``retrain`` trains even if a checkpoint
    exists. A lock file makes concurrent callers wait for one training run.
    """
    from ..checkpoints import load_or_train

    return load_or_train(recipe or InstructionRecipe(), finetune, device, progress, verbose, retrain)


def responses_path(recipe: InstructionRecipe, max_new_tokens: int = 64) -> Path:
    """Where ``load_or_generate_responses`` caches the test responses: beside the checkpoint, as JSON."""
    from ..checkpoints import checkpoint_path

    path = checkpoint_path(recipe)
    return path.with_name(f"{path.stem}-test-responses-{max_new_tokens}.json")


def load_or_generate_responses(recipe: InstructionRecipe | None = None, model=None, max_new_tokens: int = 64,
                               device="cpu", progress: bool = True, regenerate: bool = False) -> list[dict]:
    """The test-split entries of ``recipe`` with the finetuned model's ``"model_response"``, cached as JSON.

    ``model`` is the finetuned model (``load_or_finetune(recipe)`` when None).
    Responses are greedy, at most ``max_new_tokens`` tokens; parallel
    callers wait for one run; ``regenerate`` generates them again.
    """
    from ..checkpoints import exclusive_lock
    from ..tokenizer import get_gpt2_encoding

    recipe = recipe or InstructionRecipe()
    path = responses_path(recipe, max_new_tokens)
    with exclusive_lock(path):
        if regenerate or not path.exists():
            if model is None:
                model, _ = load_or_finetune(recipe, device, progress=progress)
            _, _, test = recipe.splits()
            save_responses(generate_responses(model, get_gpt2_encoding(), test, max_new_tokens, device,
                                              progress), path)
    return load_responses(path)
