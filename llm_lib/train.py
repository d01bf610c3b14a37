"""Loss, evaluation, the pretraining loop and checkpoints (chapters 26-28); the fast path (35) and DDP (36)."""

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
    "load_or_train",
    "exclusive_lock",
    "TrainOptions",
    "default_autocast_dtype",
    "autocast_context",
    "make_optimizer",
    "unwrap_model",
    "train_step",
    "train_model",
    "DistributedInfo",
    "init_distributed",
    "destroy_distributed",
    "distributed_dataloader",
    "weights_digest",
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


@contextlib.contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive lock on ``path`` with the suffix ``.lock``, so parallel callers take turns."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_or_train(recipe, train_fn, device="cpu", progress: bool = True, verbose: bool = False,
                  retrain: bool = False):
    """The model of ``recipe`` from the checkpoint cache, or ``train_fn(recipe, device, progress=, verbose=)`` now.

    ``train_fn`` returns ``(model, history)``; the result is saved at
    ``checkpoint_path(recipe)`` with the recipe's key, and a lock file makes
    concurrent callers (two notebooks run in parallel) wait for one training
    run instead of each starting their own. Returns ``(model, history)``, the
    model in eval mode. ``retrain`` trains even if a checkpoint exists.
    """
    path = checkpoint_path(recipe)
    with exclusive_lock(path):
        if retrain or not path.exists():
            model, history = train_fn(recipe, device, progress=progress, verbose=verbose)
            save_checkpoint(path, model, metadata={"recipe_key": recipe.key(), "history": history})
        elif verbose:
            print(f"loaded the trained weights from {path.name} (retrain=True trains again)")
    model = GPTModel(recipe.cfg).to(device)
    metadata = load_checkpoint(path, model, map_location=device)
    if metadata.get("recipe_key") != recipe.key():
        raise ValueError(f"{path} was not written by this recipe; delete it to retrain")
    model.eval()
    return model, metadata["history"]


def load_or_pretrain(recipe: PretrainRecipe | None = None, device="cpu", progress: bool = True,
                     verbose: bool = False, retrain: bool = False):
    """The model trained by ``recipe`` (chapter 28's run by default), loaded from the cache or trained now.

    Returns ``(model, history)`` with the model in eval mode. ``verbose`` prints
    the training log (losses, a sample per epoch) when training happens;
    ``retrain`` trains even if a checkpoint exists. A lock file makes
    concurrent callers (two notebooks run in parallel) wait for one training
    run instead of each starting their own.
    """
    return load_or_train(recipe or PretrainRecipe(), pretrain, device, progress, verbose, retrain)


# ----------------------------------------------------------------------------------
# The fast training path (chapter 36) and training on several processes (chapter 37)
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


def unwrap_model(model):
    """The plain model inside ``DistributedDataParallel`` and ``torch.compile`` wrappers (itself if none)."""
    while True:
        if hasattr(model, "_orig_mod"):      # torch.compile's OptimizedModule
            model = model._orig_mod
        elif _is_ddp(model):
            model = model.module
        else:
            return model


def _is_ddp(model) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


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


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_over_ranks(values: list[float], device) -> list[float]:
    """Average numbers over all processes of the group (unchanged in a single process)."""
    import torch.distributed as dist

    _, world = _rank_and_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / world).tolist()


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


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits: its rank among ``world_size`` processes, its GPU (``local_rank``) and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and saves."""
        return self.rank == 0


def init_distributed(backend: str | None = None, device: str | None = None) -> DistributedInfo:
    """Join the process group that ``torchrun`` describes in RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.

    The backend is ``nccl`` when CUDA is there (one GPU per process, picked by
    LOCAL_RANK) and ``gloo`` on the CPU. Without those variables (a plain
    ``python`` run) nothing is initialised and this is the only process.
    """
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise ValueError("the nccl backend needs CUDA GPUs; use backend='gloo' on the CPU")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        this_device = torch.device("cuda", local_rank)
    else:
        this_device = torch.device("cpu")
    dist.init_process_group(backend=backend)
    return DistributedInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                           backend=backend, device=this_device)


def destroy_distributed() -> None:
    """Wait for every rank (a barrier), then leave the process group; does nothing in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def distributed_dataloader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                           drop_last: bool = True, num_replicas: int | None = None,
                           rank: int | None = None):
    """A ``DataLoader`` over this rank's share of ``dataset``: batches ``(batch_size, ...)`` from a DistributedSampler.

    The sampler shuffles all indices with ``seed`` (plus the epoch set by
    ``set_epoch``), the same way on every rank, and rank r keeps every
    ``num_replicas``-th index starting at r. ``num_replicas`` and ``rank`` default
    to the initialised process group (1 and 0 without one).
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    group_rank, group_world = _rank_and_world()
    num_replicas = group_world if num_replicas is None else num_replicas
    rank = group_rank if rank is None else rank
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and len(dataset) // num_replicas < batch_size:
        raise ValueError(f"{len(dataset)} examples give each of {num_replicas} ranks only "
                         f"{len(dataset) // num_replicas}, fewer than batch_size={batch_size}; "
                         f"use a smaller batch size or fewer processes")
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)


def weights_digest(model) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap_model(model).state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
