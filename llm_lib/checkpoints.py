"""Checkpoints (chapter 28) and the book's cache of trained models (chapters 28-37).

``save_checkpoint`` and ``load_checkpoint`` write and read weights without
pickled code. ``load_or_train`` keeps each training recipe's result under
``checkpoint_path``: the first caller trains, later callers (and parallel
notebooks, which wait on a lock) load.

Three properties make the cache safe to trust:

- a checkpoint is written to a temporary file and renamed into place, so an
  interrupted save never leaves a truncated file under the final name;
- the lock is held from the check for the file to the end of the read, so no
  caller reads while another writes;
- the key hashes the recipe *and* ``TRAINING_CODE_VERSION``, so a change to
  the training code that changes the weights also changes the file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch

from .data_sources import write_atomically
from .history import TrainingHistory
from .model import load_state_dict_checked

__all__ = [
    "TRAINING_CODE_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "recipe_hash",
    "checkpoint_path",
    "exclusive_lock",
    "load_or_train",
]

# Raise this whenever a change to llm_lib's training code (loops, losses, recipes,
# data order) changes the weights that an unchanged recipe produces: every cached
# checkpoint then gets a new key, and the next caller trains again.
TRAINING_CODE_VERSION = 3  # 3: the history is a TrainingHistory


def _unshared(state_dict: dict) -> dict:
    """Copy tensors that share storage (a tied head), since safetensors stores each buffer once."""
    seen, out = set(), {}
    for key, tensor in state_dict.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.detach().clone().contiguous() if ptr in seen else tensor.detach().contiguous()
        seen.add(ptr)
    return out


def save_checkpoint(path, model, optimizer=None, metadata: dict | None = None) -> Path:
    """Save model weights (and optimizer state) without pickled code; returns the path.

    A ``.safetensors`` path stores the weights only, with ``metadata`` as JSON;
    any other path is a ``torch.save`` file that ``load_checkpoint`` reads with
    ``weights_only=True``. The file appears under ``path`` only once complete.
    """
    path = Path(path)
    metadata = dict(metadata or {})
    if path.suffix == ".safetensors":
        if optimizer is not None:
            raise ValueError("a .safetensors checkpoint holds weights only; save optimizer state "
                             "to a .pt path instead")
        from safetensors.torch import save_file

        tensors = _unshared(model.state_dict())
        write_atomically(path, lambda tmp: save_file(tensors, str(tmp),
                                                      metadata={"llm_lib": json.dumps(metadata)}))
    else:
        payload = {"model": model.state_dict(),
                   "optimizer": optimizer.state_dict() if optimizer is not None else None,
                   "metadata": metadata}
        write_atomically(path, lambda tmp: torch.save(payload, tmp))
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


def recipe_hash(fields: dict) -> str:
    """12 hex digits of SHA-256 over a recipe's fields (JSON) and ``TRAINING_CODE_VERSION``."""
    text = json.dumps({**fields, "training_code_version": TRAINING_CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def checkpoint_path(recipe) -> Path:
    """Where the weights of ``recipe`` are cached: ``$LLM_LIB_CHECKPOINT_DIR`` or ``~/.cache/llm_lib/checkpoints``.

    ``recipe`` is any recipe with ``dataset``, ``cfg``, ``seed`` and ``key()``
    (``PretrainRecipe``, ``finetune.InstructionRecipe``).
    """
    from .data_sources import cache_dir

    folder = Path(os.environ.get("LLM_LIB_CHECKPOINT_DIR") or cache_dir() / "checkpoints")
    stem = Path(recipe.dataset).stem
    return folder / f"{stem}-{recipe.cfg.emb_dim}d{recipe.cfg.n_layers}l-seed{recipe.seed}-{recipe.key()}.safetensors"


@contextlib.contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive lock on ``path`` with the suffix ``.lock``, so parallel callers take turns.

    ``filelock`` locks with ``fcntl`` on Linux and macOS and ``msvcrt`` on
    Windows; the lock is released when the process ends, even if it crashes.
    """
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        yield


@contextlib.contextmanager
def _own_random_state(device):
    """Run the body with its own copy of torch's random state: the caller's state is the same afterwards."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def load_or_train(recipe, train_fn, device="cpu", progress: bool = True, verbose: bool = False,
                  retrain: bool = False):
    """The model of ``recipe`` from the checkpoint cache, or ``train_fn(recipe, device, progress=, verbose=)`` now.

    ``train_fn`` returns ``(model, TrainingHistory)``; the result is saved at
    ``checkpoint_path(recipe)`` with the recipe's key. One lock covers the
    check, the training and the read, so concurrent callers (two notebooks run
    in parallel) wait for one training run instead of each starting their own.
    Training runs on a copy of torch's random state, so a cold cache and a
    warm one leave the caller's random numbers alike. Returns
    ``(model, history)``, the model in eval mode. ``retrain`` trains even if a
    checkpoint exists.
    """
    from .fast import FastGPTModel

    path = checkpoint_path(recipe)
    with exclusive_lock(path):
        if retrain or not path.exists():
            with _own_random_state(device):
                model, history = train_fn(recipe, device, progress=progress, verbose=verbose)
            save_checkpoint(path, model, metadata={"recipe_key": recipe.key(),
                                                   "history": history.as_dict()})
        elif verbose:
            print(f"loaded the trained weights from {path.name} (retrain=True trains again)")
        model = FastGPTModel(recipe.cfg).to(device)
        metadata = load_checkpoint(path, model, map_location=device)
    if metadata.get("recipe_key") != recipe.key():
        raise ValueError(f"{path} was not written by this recipe; delete it to retrain")
    model.eval()
    return model, TrainingHistory.from_dict(metadata["history"])
