"""Chapter 34: instruction finetuning, a GPT that answers Alpaca-style prompts.

An example is a prompt (``format_input``: a fixed header, the instruction, the
input when there is one, then ``### Response:``) followed by the reference
response. ``instruction_collate`` pads a batch with ``<|endoftext|>`` (id
50256); the targets are the inputs shifted by one token, where each row's
first pad stays as an end-of-text target (the model learns to stop) and the
other pads become ``-100``, which cross-entropy ignores. ``mask_prompt=True``
also sets the targets inside the prompt to ``-100``, so the loss covers the
response only. ``LengthGroupedBatchSampler`` puts examples of similar length in
the same batch, which saves padding.

The book's own finetuning run, cached, is in ``instruct_recipe``.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..data_sources import write_atomically
from ..history import TrainingHistory, progress_bar
from ..model import eval_mode, logits_at
from .spam_data import PAD_TOKEN_ID

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_HEADER",
    "load_instruction_data",
    "format_input",
    "InstructionDataset",
    "instruction_collate",
    "LengthGroupedBatchSampler",
    "instruction_loss_batch",
    "instruction_loss_loader",
    "train_instruction_model",
    "last_token_logits",
    "generate_response",
    "generate_responses",
    "save_responses",
    "load_responses",
]

IGNORE_INDEX = -100  # the default ignore_index of torch.nn.functional.cross_entropy
PROMPT_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


def load_instruction_data(name: str = "instruction-data.json") -> list[dict[str, str]]:
    """The instruction dataset: a list of ``{"instruction", "input", "output"}`` dicts (``input`` may be "")."""
    from ..data_sources import load_text

    entries = json.loads(load_text(name))
    for i, entry in enumerate(entries):
        missing = [key for key in ("instruction", "input", "output") if key not in entry]
        if missing:
            raise ValueError(f"{name} entry {i} lacks the key(s) {missing}")
    return entries


def format_input(entry: Mapping[str, str]) -> str:
    """The Alpaca-style prompt of ``entry``: header, instruction, input (when not empty), ``### Response:`` line.

    The prompt ends with a newline, so the response follows it directly.
    """
    if "instruction" not in entry:
        raise KeyError(f"an entry needs an 'instruction' key; this one has {sorted(entry)}")
    text = f"{PROMPT_HEADER}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"


class InstructionDataset(Dataset):
    """Entries as token ids: item i is ``(ids, prompt_length)``, the prompt's ids followed by the response's.

    ``ids`` is a list of ints without the end-of-text token (the collate adds
    it); the first ``prompt_length`` ids are the prompt. ``lengths`` lists
    ``len(ids)`` for every item (for ``LengthGroupedBatchSampler``).
    """

    def __init__(self, entries: Sequence[Mapping[str, str]], tokenizer):
        if not entries:
            raise ValueError("InstructionDataset needs at least one entry")
        self.entries = list(entries)
        self.encoded: list[list[int]] = []
        self.prompt_lengths: list[int] = []
        for entry in self.entries:
            if "output" not in entry:
                raise KeyError(f"an entry needs an 'output' key (the reference response); this one has {sorted(entry)}")
            prompt = tokenizer.encode(format_input(entry))
            self.encoded.append(prompt + tokenizer.encode(entry["output"]))
            self.prompt_lengths.append(len(prompt))
        self.lengths = [len(ids) for ids in self.encoded]

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.encoded[i], self.prompt_lengths[i]


def instruction_collate(batch: Sequence[tuple[Sequence[int], int]], pad_token_id: int = PAD_TOKEN_ID,
                        ignore_index: int = IGNORE_INDEX, mask_prompt: bool = False,
                        allowed_max_length: int | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, prompt_length)`` items -> ``(inputs, targets)``, both ``(batch, tokens)`` int64.

    Each row is its ids plus one ``pad_token_id`` (the end-of-text target),
    padded with ``pad_token_id`` to the longest row plus one; ``inputs`` drop
    the last column and ``targets`` the first (shifted by one). Target pads
    after each row's first become ``ignore_index``; ``mask_prompt=True`` also
    sets the targets that are prompt tokens to ``ignore_index`` (the model
    still reads the prompt). ``allowed_max_length`` keeps the first that many
    columns of both.
    """
    if len(batch) == 0:
        raise ValueError("instruction_collate got an empty batch")
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ValueError(f"allowed_max_length must be at least 1 (or None), got {allowed_max_length}")
    for row, (ids, prompt_length) in enumerate(batch):
        if len(ids) == 0:
            raise ValueError(f"item {row} of the batch has no tokens")
        if not 0 <= prompt_length <= len(ids):
            raise ValueError(f"item {row} has prompt_length={prompt_length}, outside 0..{len(ids)} (its length)")
    width = max(len(ids) for ids, _ in batch) + 1
    inputs, targets = [], []
    for ids, prompt_length in batch:
        n = len(ids)
        row = torch.tensor(list(ids) + [pad_token_id] * (width - n), dtype=torch.long)
        x, y = row[:-1], row[1:].clone()
        y[n:] = ignore_index  # y[n - 1] is the first pad: the end-of-text target stays
        if mask_prompt:  # y[j] is token j + 1, a prompt token when j + 1 < prompt_length
            y[:max(prompt_length - 1, 0)] = ignore_index
        inputs.append(x)
        targets.append(y)
    inputs, targets = torch.stack(inputs), torch.stack(targets)
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return inputs.to(device), targets.to(device)


class LengthGroupedBatchSampler(Sampler):
    """Batches of indices whose ``lengths`` are close, so a batch needs little padding.

    With ``shuffle=True`` every pass shuffles the indices (a ``random.Random``
    seeded with ``seed`` plus the number of earlier passes), cuts them into
    pools of ``pool_size`` (all indices when None), sorts each pool by length,
    cuts it into batches and shuffles the order of the batches. With
    ``shuffle=False`` the batches run from shortest to longest. ``drop_last``
    drops batches smaller than ``batch_size``. Use it as
    ``DataLoader(dataset, batch_sampler=sampler, collate_fn=...)``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 123,
                 pool_size: int | None = None, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if pool_size is not None and pool_size < batch_size:
            raise ValueError(f"pool_size={pool_size} must be at least batch_size={batch_size} (or None)")
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pool_size, self.drop_last = pool_size, drop_last
        self.passes = 0  # how many times the sampler has been iterated

    def batches(self, pass_number: int = 0) -> list[list[int]]:
        """The batches of pass ``pass_number`` (what the ``pass_number``-th iteration yields, from 0)."""
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + pass_number)
        if self.shuffle:
            rng.shuffle(order)
        pool_size = self.pool_size or max(len(order), 1)
        batches = []
        for start in range(0, len(order), pool_size):
            pool = sorted(order[start:start + pool_size], key=lambda i: self.lengths[i])  # stable: ties stay shuffled
            batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.passes)
        self.passes += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self.batches(0))


def instruction_loss_batch(inputs: torch.Tensor, targets: torch.Tensor, model, device="cpu") -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``-100``; inputs and targets ``(batch, tokens)``.

    Equal to ``llm_lib.train.calc_loss_batch`` (cross-entropy ignores -100 by
    default), but the model computes logits only at the counted positions:
    the 50,257-way output head is most of a small model's cost, and with a
    masked prompt most positions do not count.
    """
    inputs, targets = inputs.to(device), targets.to(device)
    keep = targets != IGNORE_INDEX
    if not keep.any():
        raise ValueError("every target of this batch is -100, so there is no loss to compute; "
                         "is allowed_max_length shorter than the prompts?")
    logits = logits_at(model, inputs, keep)  # (counted targets, vocab_size)
    return F.cross_entropy(logits, targets[keep])


@torch.no_grad()
def instruction_loss_loader(loader, model, device="cpu") -> float:
    """Mean loss per counted target over every batch of ``loader``, in eval mode."""
    total, count = 0.0, 0
    with eval_mode(model):
        for inputs, targets in loader:
            n = int((targets != IGNORE_INDEX).sum())
            total += instruction_loss_batch(inputs, targets, model, device).item() * n
            count += n
    if count == 0:
        raise ValueError("the loader yields no counted targets, so there is no loss to average")
    return total / count


def train_instruction_model(model, train_loader, val_loader, optimizer, *, num_epochs: int,
                            eval_every: int = 20, device="cpu", progress: bool = True,
                            verbose: bool = True) -> TrainingHistory:
    """Finetune on ``(inputs, targets)`` batches with ``instruction_loss_batch``; returns the TrainingHistory.

    The first evaluation (step 0) is the validation loss before training; then
    one every ``eval_every`` optimizer steps and one after the last. Each has
    the mean training loss of the steps since the previous one (free, but
    measured while the weights moved; NaN at step 0) and
    ``instruction_loss_loader`` over all of ``val_loader``. ``seen`` counts
    input tokens, padding included.
    """
    if num_epochs < 1 or eval_every < 1:
        raise ValueError(f"num_epochs and eval_every must be at least 1, got {num_epochs} and {eval_every}")
    per_epoch = len(train_loader)
    total = num_epochs * per_epoch
    history = TrainingHistory(unit="tokens")
    history.record(step=0, epoch=0.0, seen=0, train_loss=math.nan,
                   val_loss=instruction_loss_loader(val_loader, model, device))
    if verbose:
        print(history.line(total_steps=total))
    step, seen, since_last = 0, 0, []
    with progress_bar(total, desc="finetuning", enabled=progress) as bar:
        for _ in range(num_epochs):
            model.train()
            for inputs, targets in train_loader:
                optimizer.zero_grad()
                loss = instruction_loss_batch(inputs, targets, model, device)
                loss.backward()
                optimizer.step()
                step, seen = step + 1, seen + inputs.numel()
                history.step_losses.append(loss.item())
                since_last.append(loss.item())
                bar.update()
                if step % eval_every == 0 or step == total:
                    history.record(step=step, epoch=step / per_epoch, seen=seen,
                                   train_loss=sum(since_last) / len(since_last),
                                   val_loss=instruction_loss_loader(val_loader, model, device))
                    since_last = []
                    if verbose:
                        print(history.line(total_steps=total))
    model.eval()
    return history


def last_token_logits(model, idx: torch.Tensor) -> torch.Tensor:
    """``model(idx)[:, -1, :]``, ``(batch, vocab)``, with the output head run at the last position only."""
    return logits_at(model, idx, -1)


@torch.no_grad()
def generate_response(model, tokenizer, entry: Mapping[str, str], max_new_tokens: int = 64,
                      eos_id: int = PAD_TOKEN_ID, device="cpu") -> str:
    """The model's greedy answer to ``format_input(entry)``: new tokens until ``eos_id``, decoded and stripped.

    ``llm_lib.generate.generate(..., temperature=0, eos_id=eos_id)`` after the
    prompt; only the last ``context_length`` tokens are read at each step.
    """
    from ..generate import generate

    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt = torch.tensor([tokenizer.encode(format_input(entry))], device=device)
    out = generate(model, prompt, max_new_tokens, model.cfg.context_length, temperature=0.0, eos_id=eos_id)
    return tokenizer.decode(out[0, prompt.shape[1]:].tolist()).strip()


def generate_responses(model, tokenizer, entries: Sequence[Mapping[str, str]], max_new_tokens: int = 64,
                       device="cpu", progress: bool = True) -> list[dict]:
    """Copies of ``entries``, each with a ``"model_response"`` key: ``generate_response`` (greedy) for each."""
    from tqdm import tqdm

    out = []
    for entry in tqdm(entries, desc="generating", unit="entry", disable=not progress, file=sys.stderr, leave=False):
        out.append({**entry, "model_response": generate_response(model, tokenizer, entry, max_new_tokens,
                                                                 device=device)})
    return out


def save_responses(entries: Sequence[Mapping], path) -> Path:
    """Write ``entries`` (with their ``model_response``) to ``path`` as indented UTF-8 JSON; returns the path."""
    path = Path(path)
    text = json.dumps(list(entries), indent=2, ensure_ascii=False) + "\n"
    # atomic, as checkpoints are: a reader never sees half a file
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def load_responses(path) -> list[dict]:
    """The list of entries that ``save_responses`` wrote to ``path``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
