"""Chapter 33: a spam classifier on top of a pretrained GPT.

The recipe: replace GPT's 50,257-way output head with a 2-way one, read the
class logits at the last real token of each message (causal attention lets
that token see the whole message and nothing after it, so padding cannot
change them), freeze all but the top of the model, and train with
cross-entropy. When only the top blocks train, the frozen blocks below always
compute the same hidden states (without dropout), so ``cache_hidden_states``
computes them once and training runs on the cache: the same training, at a
fraction of the cost.

Batches are ``(inputs, labels, lengths)``: token ids ``(batch, tokens)``
padded with ``<|endoftext|>``, or cached hidden states ``(batch, tokens,
emb_dim)``; ``lengths`` counts each message's real tokens.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..history import TrainingHistory, progress_bar
from ..model import autocast_context, eval_mode, select_positions
from .spam_data import CLASS_NAMES, SpamDataset

__all__ = [
    "HiddenStateDataset",
    "add_classification_head",
    "freeze_for_classification",
    "hidden_states",
    "classifier_logits",
    "cache_hidden_states",
    "classifier_outputs",
    "evaluate_classifier",
    "train_classifier",
    "classify_text",
    "confusion_matrix",
]

class HiddenStateDataset(Dataset):
    """Cached hidden states: item i is ``(states (length_i, emb_dim), label, length)``; see ``cache_hidden_states``.

    Use it with ``DataLoader(..., collate_fn=HiddenStateDataset.collate)``.
    """

    def __init__(self, states: list[torch.Tensor], labels: list[int], start_block: int):
        if len(states) != len(labels):
            raise ValueError(f"{len(states)} hidden-state tensors but {len(labels)} labels")
        self.states = states
        self.labels = labels
        self.start_block = start_block  # the block these states enter

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int):
        return self.states[i], torch.tensor(self.labels[i]), torch.tensor(len(self.states[i]))

    @staticmethod
    def collate(items):
        """Pad a list of items to the longest in it with zeros: ``(states (b, T, emb_dim), labels, lengths)``."""
        states = nn.utils.rnn.pad_sequence([s for s, _, _ in items], batch_first=True)
        return states, torch.stack([y for _, y, _ in items]), torch.stack([n for _, _, n in items])


def add_classification_head(model: nn.Module, num_classes: int = 2) -> nn.Module:
    """Replace ``model.out_head`` by a fresh ``nn.Linear(emb_dim, num_classes)``; returns the model."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    emb_dim = model.final_norm.scale.shape[0]
    device = model.final_norm.scale.device
    model.out_head = nn.Linear(emb_dim, num_classes).to(device)
    return model


def freeze_for_classification(model: nn.Module, trainable: str | int = "last_block") -> int:
    """Freeze the model except its top; returns the number of trainable parameters.

    ``"last_block"``: the last transformer block, the final LayerNorm and the
    output head; an integer n: the last n blocks (0: only the final norm and
    head) plus those two; ``"all"``: every parameter.
    """
    n_layers = len(model.trf_blocks)
    if trainable == "all":
        n_top = None
    elif trainable == "last_block":
        n_top = 1
    elif isinstance(trainable, int) and not isinstance(trainable, bool) and 0 <= trainable <= n_layers:
        n_top = trainable
    else:
        raise ValueError(f"trainable must be 'last_block', 'all' or a number of blocks in 0..{n_layers}, "
                         f"got {trainable!r}")
    for p in model.parameters():
        p.requires_grad = n_top is None
    if n_top is not None:
        top = [model.final_norm, model.out_head, *list(model.trf_blocks)[n_layers - n_top:]]
        for module in top:
            for p in module.parameters():
                p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _modules_below(model: nn.Module, start_block: int) -> list[nn.Module]:
    """What runs before ``trf_blocks[start_block]``: the embeddings (GPT's token and position tables and
    their dropout, or Llama's token table alone) and the blocks below it."""
    embeddings = [getattr(model, name, None) for name in ("tok_emb", "pos_emb", "drop_emb")]
    return [m for m in embeddings if m is not None] + list(model.trf_blocks)[:start_block]


def _has_trainable(modules: list[nn.Module]) -> bool:
    return any(p.requires_grad for m in modules for p in m.parameters())


def _block_input(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """What enters the first block. GPT (chapter 24) adds position embeddings (then dropout); Llama
    (chapter 32) has none, since its positions enter every attention layer as rotations."""
    if hasattr(model, "pos_emb"):
        return model.drop_emb(model.embed(ids))
    return model.tok_emb(ids)


def hidden_states(model: nn.Module, ids: torch.Tensor, stop_block: int) -> torch.Tensor:
    """Token ids ``(batch, tokens)`` -> hidden states ``(batch, tokens, emb_dim)`` entering block ``stop_block``."""
    if not 0 <= stop_block <= len(model.trf_blocks):
        raise ValueError(f"stop_block must be in 0..{len(model.trf_blocks)}, got {stop_block}")
    x = _block_input(model, ids)
    for block in list(model.trf_blocks)[:stop_block]:
        x = block(x)
    return x


def classifier_logits(model: nn.Module, inputs: torch.Tensor, lengths: torch.Tensor,
                      start_block: int = 0) -> torch.Tensor:
    """Class logits ``(batch, num_classes)`` read at each message's last real token (position ``length - 1``).

    ``inputs`` are token ids ``(batch, tokens)`` (with ``start_block=0``) or
    hidden states ``(batch, tokens, emb_dim)`` entering
    ``trf_blocks[start_block]`` (as ``cache_hidden_states`` stores them). The
    batch is first cut to its longest message: with causal attention the
    padding after a message cannot change its last token's output.
    """
    n_layers = len(model.trf_blocks)
    if not 0 <= start_block <= n_layers:
        raise ValueError(f"start_block must be in 0..{n_layers}, got {start_block}")
    emb_dim = model.final_norm.scale.shape[0]
    is_ids = inputs.dim() == 2 and start_block == 0
    if not is_ids and (inputs.dim() != 3 or inputs.shape[-1] != emb_dim):
        what = "token ids (batch, tokens) or " if start_block == 0 else ""
        raise ValueError(f"start_block={start_block} expects {what}hidden states (batch, tokens, {emb_dim}), "
                         f"got shape {tuple(inputs.shape)}")
    lengths = lengths.to(inputs.device)
    if lengths.shape != inputs.shape[:1] or lengths.min() < 1 or lengths.max() > inputs.shape[1]:
        raise ValueError(f"lengths must be one count in 1..{inputs.shape[1]} per message, "
                         f"got {lengths.tolist()} for inputs of shape {tuple(inputs.shape)}")
    inputs = inputs[:, :int(lengths.max())]
    x = _block_input(model, inputs) if is_ids else inputs
    for block in list(model.trf_blocks)[start_block:]:
        x = block(x)
    return model.out_head(model.final_norm(select_positions(x, lengths - 1)))  # at each last real token


@torch.no_grad()
def cache_hidden_states(model: nn.Module, dataset: SpamDataset, start_block: int, batch_size: int = 32,
                        device="cpu", progress: bool = True,
                        autocast_dtype: torch.dtype | None = None) -> HiddenStateDataset:
    """Run the frozen blocks below ``start_block`` once over ``dataset``; returns their outputs, real tokens only.

    Training the blocks from ``start_block`` up on these states is the same as
    training on token ids, provided the blocks below are frozen and have no
    dropout. Messages are processed in order of length, so batches carry
    little padding. ``autocast_dtype=torch.bfloat16`` runs the frozen blocks
    under autocast (chapter 36), several times faster on CPUs with bfloat16
    instructions; the states are stored in float32 and differ from the float32
    ones by bfloat16's rounding (about 3 significant digits).
    """
    from tqdm import tqdm

    below = _modules_below(model, start_block)
    if _has_trainable(below):
        raise ValueError(f"the embeddings and blocks below start_block={start_block} must be frozen "
                         f"(freeze_for_classification) before their outputs are cached")
    rates = [rate for part in below for m in part.modules()
             for rate in ([m.p] if isinstance(m, nn.Dropout) else []) + [getattr(m, "dropout_p", 0.0)]]
    dropout = [rate for rate in rates if rate > 0]
    if dropout:
        raise ValueError(f"the frozen blocks use dropout (p={dropout[0]}), so their outputs change from step "
                         f"to step and a cache would not match training; build the model with drop_rate=0")
    amp = autocast_context(device, autocast_dtype)
    order = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
    states: list[torch.Tensor | None] = [None] * len(dataset)
    with eval_mode(model), amp:
        for start in tqdm(range(0, len(order), batch_size), desc="caching hidden states", unit="batch",
                          disable=not progress, file=sys.stderr, leave=False, mininterval=1.0):
            idx = order[start:start + batch_size]
            longest = dataset.lengths[idx[-1]]
            ids = torch.stack([dataset[i][0][:longest] for i in idx]).to(device)
            out = hidden_states(model, ids, start_block).float().cpu()
            for row, i in enumerate(idx):
                states[i] = out[row, :dataset.lengths[i]].clone()
    return HiddenStateDataset(states, list(dataset.labels), start_block)


@torch.no_grad()
def classifier_outputs(model: nn.Module, loader, start_block: int = 0, device="cpu"):
    """Logits ``(n, num_classes)`` and labels ``(n,)`` for every example of ``loader``, in eval mode."""
    logits, labels = [], []
    with eval_mode(model):
        for inputs, y, lengths in loader:
            logits.append(classifier_logits(model, inputs.to(device), lengths, start_block).cpu())
            labels.append(y)
    if not logits:
        raise ValueError("the data loader yields no batches")
    return torch.cat(logits), torch.cat(labels)


def evaluate_classifier(model: nn.Module, loader, start_block: int = 0, device="cpu") -> tuple[float, float]:
    """``(loss, accuracy)`` over every example of ``loader``: mean cross-entropy and fraction right."""
    logits, labels = classifier_outputs(model, loader, start_block, device)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=-1) == labels).float().mean().item()
    return loss, accuracy


def train_classifier(model: nn.Module, train_loader, val_loader, optimizer, *, num_epochs: int,
                     start_block: int = 0, device="cpu", progress: bool = True,
                     verbose: bool = True) -> TrainingHistory:
    """Train with cross-entropy on the class logits; returns the TrainingHistory, one evaluation per epoch.

    Each evaluation records the epoch's mean training loss and accuracy
    (``metrics["train_acc"]``; each batch measured just before its update,
    so they cost nothing extra) and the whole validation loader's loss and
    accuracy (``metrics["val_acc"]``) after the epoch; ``seen`` counts
    examples. ``start_block`` says what the loaders yield (0: token ids; k:
    hidden states entering block k).
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    if start_block > 0 and _has_trainable(_modules_below(model, start_block)):
        raise ValueError(f"with start_block={start_block} the blocks below it are not run, so they cannot be "
                         f"trained; freeze them or train on token ids with start_block=0")
    history = TrainingHistory(unit="examples")
    step = seen = 0
    with progress_bar(num_epochs * len(train_loader), enabled=progress) as bar:
        for epoch in range(1, num_epochs + 1):
            model.train()
            loss_sum, correct, count = 0.0, 0, 0
            for inputs, labels, lengths in train_loader:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                logits = classifier_logits(model, inputs, lengths, start_block)
                loss = F.cross_entropy(logits, labels)
                loss.backward()
                optimizer.step()
                step, seen = step + 1, seen + len(labels)
                loss_sum += loss.item() * len(labels)
                correct += (logits.argmax(dim=-1) == labels).sum().item()
                count += len(labels)
                history.step_losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if count == 0:
                raise ValueError("the training loader yields no batches")
            val_loss, val_acc = evaluate_classifier(model, val_loader, start_block, device)
            history.record(step=step, epoch=epoch, seen=seen, train_loss=loss_sum / count,
                           val_loss=val_loss, train_acc=correct / count, val_acc=val_acc)
            if verbose:
                print(history.line(total_steps=num_epochs * len(train_loader)))
    model.eval()
    return history


@torch.no_grad()
def classify_text(text: str, model: nn.Module, tokenizer, max_length: int | None = None, device="cpu",
             class_names: Sequence[str] = CLASS_NAMES) -> str:
    """The predicted class name of one message (``"spam"`` or ``"ham"``); longer texts keep their first tokens.

    At most ``max_length`` tokens are read (the model's context length by
    default). A single message needs no padding.
    """
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text has no tokens, so there is no last token to classify")
    context = model.cfg.context_length
    limit = context if max_length is None else min(max_length, context)
    ids = ids[:limit]
    with eval_mode(model):
        logits = classifier_logits(model, torch.tensor([ids], device=device), torch.tensor([len(ids)]))
    if logits.shape[-1] != len(class_names):
        raise ValueError(f"the model has {logits.shape[-1]} classes but {len(class_names)} class names were given")
    return class_names[int(logits.argmax(dim=-1))]


def confusion_matrix(labels, predictions, num_classes: int = 2) -> torch.Tensor:
    """Counts ``(num_classes, num_classes)``: row = true class, column = predicted class."""
    labels, predictions = torch.as_tensor(labels).flatten(), torch.as_tensor(predictions).flatten()
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.numel()} labels but {predictions.numel()} predictions")
    for name, t in (("labels", labels), ("predictions", predictions)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got values {t.min().item()}..{t.max().item()}")
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
