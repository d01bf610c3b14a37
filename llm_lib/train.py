"""Loss, evaluation, the pretraining loop and checkpoints (chapters 26-28)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .generate import generate_text_simple, text_to_token_ids, token_ids_to_text
from .model import GPTConfig, GPTModel, load_state_dict_checked

__all__ = [
    "calc_loss_batch",
    "calc_loss_loader",
    "evaluate_model",
    "generate_and_print_sample",
    "train_model_simple",
    "plot_losses",
    "save_checkpoint",
    "load_checkpoint",
    "PretrainRecipe",
    "pretrain",
    "checkpoint_path",
    "load_or_pretrain",
]


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model,
                    device="cpu") -> torch.Tensor:
    """Mean cross-entropy of the model's next-token predictions: inputs and targets ``(batch, tokens)``."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (b, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device="cpu", num_batches: int | None = None) -> float:
    """Average ``calc_loss_batch`` over the first ``num_batches`` batches of a loader (all by default)."""
    if len(data_loader) == 0:
        raise ValueError("the data loader yields no batches, so there is no loss to average")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


@torch.no_grad()
def evaluate_model(model, train_loader, val_loader, device="cpu", eval_iter: int = 5):
    """Training and validation loss over ``eval_iter`` batches each, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    try:
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    finally:
        model.train(was_training)
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context: str,
                              max_new_tokens: int = 50) -> str:
    """Greedily continue ``start_context`` and print it on one line; returns the text."""
    context_size = model.pos_emb.weight.shape[0]
    idx = text_to_token_ids(start_context, tokenizer).to(device)
    out = generate_text_simple(model, idx, max_new_tokens, context_size)
    text = token_ids_to_text(out.cpu(), tokenizer).replace("\n", " ")
    print(text)
    return text


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs: int,
                       eval_freq: int, eval_iter: int, start_context: str | None = None,
                       tokenizer=None, progress: bool = True, sample_tokens: int = 50):
    """Train with next-token cross-entropy; returns ``(train_losses, val_losses, tokens_seen)``.

    Every ``eval_freq`` optimizer steps both losses are measured over
    ``eval_iter`` batches and printed; after each epoch a greedy sample of
    ``start_context`` is printed (when a tokenizer is given).
    """
    from tqdm import tqdm

    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    bar = tqdm(total=num_epochs * len(train_loader), desc="training", unit="step",
               disable=not progress, file=sys.stderr, leave=False)
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            global_step += 1
            bar.update(1)
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device,
                                                      eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
                print(f"Ep {epoch + 1} (step {global_step:06d}): "
                      f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        if start_context is not None and tokenizer is not None:
            generate_and_print_sample(model, tokenizer, device, start_context, sample_tokens)
    bar.close()
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, ax=None):
    """Training and validation loss against epochs (bottom axis) and tokens seen (top axis); returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    ax.plot(epochs_seen, train_losses, label="training loss")
    ax.plot(epochs_seen, val_losses, linestyle="--", label="validation loss")
    ax.set_xlabel("epochs")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Loss during pretraining")
    ax.legend(loc="upper right")
    top = ax.twiny()  # same curve, labelled by tokens seen
    top.plot(tokens_seen, train_losses, alpha=0)
    top.set_xlabel("tokens seen")
    fig.tight_layout()
    return fig


def _unshared(state_dict: dict) -> dict:
    """Copy tensors that share storage (a tied head), since safetensors stores each buffer once."""
    seen, out = set(), {}
    for key, tensor in state_dict.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.detach().clone().contiguous() if ptr in seen else tensor.detach().contiguous()
        seen.add(ptr)
    return out


def save_checkpoint(path, model, optimizer=None, metadata: dict | None = None) -> Path:
    """Save model weights (and optimizer state) without pickled code.

    A ``.safetensors`` path stores the weights only, with ``metadata`` as JSON;
    any other path is a ``torch.save`` file that ``load_checkpoint`` reads with
    ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    if path.suffix == ".safetensors":
        if optimizer is not None:
            raise ValueError("a .safetensors checkpoint holds weights only; save optimizer state "
                             "to a .pt path instead")
        from safetensors.torch import save_file

        save_file(_unshared(model.state_dict()), str(path),
                  metadata={"llm_lib": json.dumps(metadata)})
    else:
        torch.save({"model": model.state_dict(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "metadata": metadata}, path)
    return path


def load_checkpoint(path, model, optimizer=None, map_location="cpu") -> dict:
    """Load weights saved by ``save_checkpoint`` into ``model`` (and ``optimizer``); returns the metadata.

    Shapes are checked first, so a checkpoint from another configuration
    fails with the name of the parameter that does not fit.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        state_dict = load_file(str(path), device=str(map_location))
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("llm_lib", "{}"))
        opt_state = None
    else:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        state_dict, opt_state = checkpoint["model"], checkpoint.get("optimizer")
        metadata = checkpoint.get("metadata", {})
    load_state_dict_checked(model, state_dict, source=str(path))
    if optimizer is not None:
        if opt_state is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(opt_state)
    return metadata


# ----------------------------------------------------------------------------------
# The book's pretraining run (chapter 28), cached so later chapters reuse its weights
# ----------------------------------------------------------------------------------


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
    eval_freq: int = 5
    eval_iter: int = 5
    start_context: str = "Every effort moves you"

    def key(self) -> str:
        """A short hash of the recipe, used in the checkpoint's file name.

        Config fields added after chapter 28 enter the hash only when they differ
        from their defaults, so adding an option does not orphan cached weights.
        """
        fields = dataclasses.asdict(self)
        defaults = dataclasses.asdict(GPTConfig())
        fields["cfg"] = {name: value for name, value in fields["cfg"].items()
                         if name in _CFG_FIELDS_OF_CHAPTER_28 or value != defaults[name]}
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

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
    """Run ``recipe`` from a seeded random model; returns ``(model, history)``.

    ``history`` holds ``train_losses``, ``val_losses`` and ``tokens_seen`` as lists.
    """
    from .tokenizer import get_gpt2_encoding

    tokenizer = get_gpt2_encoding()
    torch.manual_seed(recipe.seed)
    model = GPTModel(recipe.cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    train_loader, val_loader = recipe.loaders(tokenizer)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        train_losses, val_losses, tokens_seen = train_model_simple(
            model, train_loader, val_loader, optimizer, device, recipe.num_epochs, recipe.eval_freq,
            recipe.eval_iter, recipe.start_context, tokenizer, progress=progress)
    history = {"train_losses": train_losses, "val_losses": val_losses, "tokens_seen": tokens_seen}
    return model, history


def checkpoint_path(recipe: PretrainRecipe) -> Path:
    """Where the weights of ``recipe`` are cached: ``$LLM_LIB_CHECKPOINT_DIR`` or ``~/.cache/llm_lib/checkpoints``."""
    from .data_sources import cache_dir

    folder = Path(os.environ.get("LLM_LIB_CHECKPOINT_DIR") or cache_dir() / "checkpoints")
    stem = Path(recipe.dataset).stem
    return folder / f"{stem}-{recipe.cfg.emb_dim}d{recipe.cfg.n_layers}l-seed{recipe.seed}-{recipe.key()}.safetensors"


def load_or_pretrain(recipe: PretrainRecipe | None = None, device="cpu", progress: bool = True,
                     verbose: bool = False, retrain: bool = False):
    """The model trained by ``recipe`` (chapter 28's run by default), loaded from the cache or trained now.

    Returns ``(model, history)`` with the model in eval mode. ``verbose`` prints
    the training log (losses, a sample per epoch) when training happens;
    ``retrain`` trains even if a checkpoint exists. A lock file makes
    concurrent callers (two notebooks run in parallel) wait for one training
    run instead of each starting their own.
    """
    import fcntl

    recipe = recipe or PretrainRecipe()
    path = checkpoint_path(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if retrain or not path.exists():
            model, history = pretrain(recipe, device, progress=progress, verbose=verbose)
            save_checkpoint(path, model, metadata={"recipe_key": recipe.key(), "history": history})
        elif verbose:
            print(f"loaded the trained weights from {path.name} (retrain=True trains again)")
    model = GPTModel(recipe.cfg).to(device)
    metadata = load_checkpoint(path, model, map_location=device)
    if metadata.get("recipe_key") != recipe.key():
        raise ValueError(f"{path} was not written by this recipe; delete it to retrain")
    model.eval()
    return model, metadata["history"]
