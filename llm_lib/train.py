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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import _is_ddp, _mean_over_ranks, _rank_and_world, unwrap_model
from .generate import generate_text_simple, text_to_token_ids, token_ids_to_text
from .history import TrainingHistory, progress_bar
from .model import autocast_context, check_autocast_dtype, eval_mode

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
    "TrainingHistory",
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
def evaluate_model(model, train_loader, val_loader, device="cpu",
                   num_batches: int = 5):
    """Training and validation loss over ``num_batches`` batches of each
    loader, in eval mode (no dropout) and without a graph."""
    with eval_mode(model):
        train_loss = calc_loss_loader(train_loader, model, device, num_batches)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches)
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, prompt: str, max_new_tokens: int = 50,
                              device="cpu") -> str:
    """Greedily continue ``prompt`` and print it on one line; returns the text."""
    context_size = model.pos_emb.weight.shape[0]
    idx = text_to_token_ids(prompt, tokenizer).to(device)
    out = generate_text_simple(model, idx, max_new_tokens, context_size)
    text = token_ids_to_text(out.cpu(), tokenizer).replace("\n", " ")
    print(text)
    return text


def train_model_simple(model, train_loader, val_loader, optimizer, *,
                       num_epochs: int, eval_every: int = 5,
                       eval_batches: int = 5, device="cpu",
                       prompt: str | None = None, tokenizer=None,
                       sample_tokens: int = 50, progress: bool = True,
                       verbose: bool = True) -> TrainingHistory:
    """Train on next-token cross-entropy; returns the run's TrainingHistory.

    Both losses are measured over ``eval_batches`` batches right after the
    first update, then after every ``eval_every`` more; ``verbose`` prints
    each evaluation. After each epoch the model continues ``prompt``
    greedily (when a tokenizer is given), so the text can be seen improving.
    """
    history = TrainingHistory(unit="tokens")
    per_epoch = len(train_loader)
    total = num_epochs * per_epoch
    step = seen = 0
    with progress_bar(total, enabled=progress) as bar:
        for _ in range(num_epochs):
            model.train()
            for inputs, targets in train_loader:
                optimizer.zero_grad()
                loss = calc_loss_batch(inputs, targets, model, device)
                loss.backward()
                optimizer.step()
                step, seen = step + 1, seen + inputs.numel()
                history.step_losses.append(loss.item())
                bar.update()
                if (step - 1) % eval_every == 0:
                    train_loss, val_loss = evaluate_model(
                        model, train_loader, val_loader, device, eval_batches)
                    history.record(step=step, epoch=step / per_epoch, seen=seen,
                                   train_loss=train_loss, val_loss=val_loss)
                    if verbose:
                        print(history.line(total_steps=total))
            if prompt is not None and tokenizer is not None and verbose:
                generate_and_print_sample(model, tokenizer, prompt,
                                          sample_tokens, device)
    return history


# ----------------------------------------------------------------------------------
# The fast training path (chapter 36), on one process or several (chapter 37)
# ----------------------------------------------------------------------------------


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
        check_autocast_dtype(self.autocast_dtype)
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


def train_model(model, train_loader, val_loader, optimizer, *, num_epochs: int = 1, eval_every: int = 5,
                eval_batches: int = 5, device="cpu", options: TrainOptions | None = None,
                prompt: str | None = None, tokenizer=None, sample_tokens: int = 50, progress: bool = True,
                verbose: bool = True, max_steps: int | None = None) -> TrainingHistory:
    """``train_model_simple`` with the switches of ``options``, on one process or several.

    With default options in one process the history is exactly
    ``train_model_simple``'s. When a ``torch.distributed`` process group is
    initialised (``model`` wrapped in DistributedDataParallel, ``train_loader``
    built on a DistributedSampler), it calls the sampler's ``set_epoch`` every
    epoch, averages the evaluated losses over all ranks, counts the tokens of
    all ranks, and only rank 0 prints, shows the progress bar and samples text.
    ``max_steps`` stops after that many steps.
    """
    options = options or TrainOptions()
    rank, world = _rank_and_world()
    is_main = rank == 0
    inner = unwrap_model(model)
    step_model = torch.compile(model) if options.compile else model
    scaler = None
    if options.autocast_dtype == torch.float16:
        scaler = torch.amp.GradScaler(torch.device(device).type)
    per_epoch = len(train_loader)
    total = num_epochs * per_epoch if max_steps is None else min(num_epochs * per_epoch, max_steps)

    history = TrainingHistory(unit="tokens")
    step = seen = 0
    with progress_bar(total, enabled=progress and is_main) as bar:
        for epoch in range(num_epochs):
            if step >= total:
                break
            if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                train_loader.sampler.set_epoch(epoch)   # a new shuffle each epoch, the same on every rank
            model.train()
            for inputs, targets in train_loader:
                if step >= total:
                    break
                loss = train_step(step_model, optimizer, inputs, targets, device, options, scaler)
                step, seen = step + 1, seen + inputs.numel() * world
                history.step_losses.append(loss)
                bar.update()
                if (step - 1) % eval_every == 0:
                    with autocast_context(device, options.autocast_dtype):
                        losses = evaluate_model(inner, train_loader, val_loader, device, eval_batches)
                    train_loss, val_loss = _mean_over_ranks(list(losses), device)
                    history.record(step=step, epoch=step / per_epoch, seen=seen, train_loss=train_loss,
                                   val_loss=val_loss)
                    if verbose and is_main:
                        print(history.line(total_steps=total))
            if prompt is not None and tokenizer is not None and verbose and is_main:
                generate_and_print_sample(inner, tokenizer, prompt, sample_tokens, device)
    return history
