"""Training: the loss (chapter 26), its average over a loader (27), the training loop (28), and the
fast path's training step and loop (chapter 36), which also runs on several processes (37).

Checkpoints and the cache of trained models live in ``checkpoints``, the book's
pretraining run in ``pretraining``, the process group in ``distributed`` and the
loss plot in ``viz``. Their names can still be imported from here, as the
chapters do (``from llm_lib.train import load_or_pretrain``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import _is_ddp, _mean_over_ranks, _rank_and_world, unwrap_model
from .generate import generate_text_simple, text_to_token_ids, token_ids_to_text
from .model import eval_mode

__all__ = [
    "calc_loss_batch",
    "calc_loss_loader",
    "evaluate_model",
    "generate_and_print_sample",
    "train_model_simple",
    "TrainOptions",
    "default_autocast_dtype",
    "autocast_context",
    "make_optimizer",
    "train_step",
    "train_model",
]

# Names that moved to a module of their own, still importable from llm_lib.train. They are
# looked up on first use (PEP 562), so this module does not import the ones that import it.
_MOVED = {
    "plot_losses": "viz",
    **dict.fromkeys(("save_checkpoint", "load_checkpoint", "checkpoint_path", "exclusive_lock",
                     "load_or_train"), "checkpoints"),
    **dict.fromkeys(("PretrainRecipe", "pretrain", "load_or_pretrain"), "pretraining"),
    **dict.fromkeys(("DistributedInfo", "init_distributed", "destroy_distributed", "distributed_dataloader",
                     "weights_digest"), "distributed"),
}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MOVED])


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
    with eval_mode(model):
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
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


# ----------------------------------------------------------------------------------
# The fast training path (chapter 36), on one process or several (chapter 37)
# ----------------------------------------------------------------------------------

_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class TrainOptions:
    """Switches of ``train_step`` / ``train_model``; the defaults are chapter 28's teaching path.

    ``autocast_dtype``: run the forward pass and the loss under ``torch.autocast`` in
    ``torch.bfloat16`` (or ``torch.float16``, with a gradient scaler); the weights and the
    optimizer stay in float32. ``compile``: train a ``torch.compile`` version of the model.
    ``grad_clip``: clip the global gradient norm to this value before each step.
    ``grad_accum_steps``: split every batch into this many equal micro-batches and add up
    their gradients before one optimizer step (same result, less memory).
    """

    autocast_dtype: torch.dtype | None = None
    compile: bool = False
    grad_clip: float | None = None
    grad_accum_steps: int = 1

    def __post_init__(self):
        if self.autocast_dtype is not None and self.autocast_dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, "
                             f"got {self.autocast_dtype}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be a positive norm or None, got {self.grad_clip}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be at least 1, got {self.grad_accum_steps}")


def default_autocast_dtype(device="cpu") -> torch.dtype | None:
    """The mixed-precision dtype worth using on ``device``: bfloat16 on GPUs that have it, float16 on older
    CUDA GPUs, None (plain float32) on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device="cpu", dtype: torch.dtype | None = None):
    """``torch.autocast`` for ``device`` in ``dtype``, or a context that changes nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def make_optimizer(model, lr: float = 4e-4, weight_decay: float = 0.1, fused: bool = False,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over all of ``model``'s parameters (chapter 28's optimizer).

    ``fused=True`` asks PyTorch for its fused kernel, which updates every
    parameter in one pass per step instead of one small loop per tensor; the
    numbers are the same up to rounding.
    """
    kwargs = {"fused": True} if fused else {}
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas, **kwargs)
    except RuntimeError as err:
        if not fused:
            raise
        kinds = sorted({f"{p.dtype} on {p.device.type}" for p in model.parameters()})
        raise ValueError(f"fused AdamW is not available for parameters of {', '.join(kinds)} in torch "
                         f"{torch.__version__} ({err}); use fused=False") from err


def train_step(model, optimizer, input_batch: torch.Tensor, target_batch: torch.Tensor, device="cpu",
               options: TrainOptions | None = None, scaler=None) -> float:
    """One optimizer step on a batch ``(batch, tokens)``; returns its mean training loss.

    Forward pass and loss under autocast (``options.autocast_dtype``), backward
    pass per micro-batch (``options.grad_accum_steps``; inside
    DistributedDataParallel the gradients are only averaged across processes
    after the last one), optional gradient clipping, then the update. A
    ``torch.amp.GradScaler`` in ``scaler`` scales the float16 loss.
    """
    options = options or TrainOptions()
    n = options.grad_accum_steps
    if input_batch.shape[0] % n:
        raise ValueError(f"a batch of {input_batch.shape[0]} sequences does not split into "
                         f"grad_accum_steps={n} equal micro-batches; make the batch size a multiple of {n}")
    micro = input_batch.shape[0] // n
    inner = model._orig_mod if hasattr(model, "_orig_mod") else model
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, (x, y) in enumerate(zip(input_batch.split(micro), target_batch.split(micro), strict=True)):
        last = i == n - 1
        skip_sync = inner.no_sync() if (not last and _is_ddp(inner)) else contextlib.nullcontext()
        with skip_sync:
            with autocast_context(device, options.autocast_dtype):
                loss = calc_loss_batch(x, y, model, device)
                if n > 1:
                    loss = loss / n
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    if options.grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(total)


def train_model(model, train_loader, val_loader, optimizer, device="cpu", num_epochs: int = 1,
                eval_freq: int = 5, eval_iter: int = 5, options: TrainOptions | None = None,
                start_context: str | None = None, tokenizer=None, progress: bool = True,
                sample_tokens: int = 50, max_steps: int | None = None):
    """``train_model_simple`` with the switches of ``options``, on one process or several.

    Returns ``(train_losses, val_losses, tokens_seen)``; with default options in
    one process the numbers are exactly ``train_model_simple``'s. When a
    ``torch.distributed`` process group is initialised (``model`` wrapped in
    DistributedDataParallel, ``train_loader`` built on a DistributedSampler), it
    calls the sampler's ``set_epoch`` every epoch, averages the evaluated losses
    over all ranks, counts the tokens of all ranks, and only rank 0 prints, shows
    the progress bar and samples text. ``max_steps`` stops after that many steps.
    """
    from tqdm import tqdm

    options = options or TrainOptions()
    rank, world = _rank_and_world()
    is_main = rank == 0
    inner = unwrap_model(model)
    step_model = torch.compile(model) if options.compile else model
    scaler = None
    if options.autocast_dtype == torch.float16:
        scaler = torch.amp.GradScaler(torch.device(device).type)
    total_steps = num_epochs * len(train_loader)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    bar = tqdm(total=total_steps, desc="training", unit="step", disable=not (progress and is_main),
               file=sys.stderr, leave=False)
    for epoch in range(num_epochs):
        if global_step + 1 >= total_steps:
            break
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)   # a new shuffle each epoch, the same on every rank
        model.train()
        for input_batch, target_batch in train_loader:
            if global_step + 1 >= total_steps:
                break
            train_step(step_model, optimizer, input_batch, target_batch, device, options, scaler)
            tokens_seen += input_batch.numel() * world
            global_step += 1
            bar.update(1)
            if global_step % eval_freq == 0:
                with autocast_context(device, options.autocast_dtype):
                    losses = evaluate_model(inner, train_loader, val_loader, device, eval_iter)
                train_loss, val_loss = _mean_over_ranks(list(losses), device)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
                if is_main:
                    print(f"Ep {epoch + 1} (step {global_step:06d}): "
                          f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        if start_context is not None and tokenizer is not None and is_main:
            generate_and_print_sample(inner, tokenizer, device, start_context, sample_tokens)
    bar.close()
    return train_losses, val_losses, track_tokens_seen
