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

``InstructionRecipe`` fixes a whole finetuning run and ``load_or_finetune``
returns its model, trained once per machine and cached (with a file lock, as
``llm_lib.train.load_or_pretrain`` does); ``load_or_generate_responses``
caches the model's answers to the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..model import GPT2_SIZES, GPTConfig, GPTModel
from .classify import PAD_TOKEN_ID
from .common import train_val_test_split

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
    "InstructionRecipe",
    "finetune",
    "load_or_finetune",
    "responses_path",
    "load_or_generate_responses",
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
    default), but a ``GPTModel`` computes logits only at the counted
    positions: the 50,257-way output head is most of a small model's cost,
    and with a masked prompt most positions do not count.
    """
    inputs, targets = inputs.to(device), targets.to(device)
    keep = targets != IGNORE_INDEX
    if not keep.any():
        raise ValueError("every target of this batch is -100, so there is no loss to compute; "
                         "is allowed_max_length shorter than the prompts?")
    if not isinstance(model, GPTModel):
        logits = model(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    logits = model.head(model.backbone(inputs)[keep])  # (counted targets, vocab_size)
    return F.cross_entropy(logits, targets[keep])


@torch.no_grad()
def instruction_loss_loader(loader, model, device="cpu") -> float:
    """Mean loss per counted target over every batch of ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for inputs, targets in loader:
            n = int((targets != IGNORE_INDEX).sum())
            total += instruction_loss_batch(inputs, targets, model, device).item() * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader yields no counted targets, so there is no loss to average")
    return total / count


def train_instruction_model(model, train_loader, val_loader, optimizer, num_epochs: int, eval_freq: int = 20,
                            device="cpu", progress: bool = True, verbose: bool = True) -> dict:
    """Finetune on ``(inputs, targets)`` batches with ``instruction_loss_batch``; returns the history (lists).

    Every ``eval_freq`` optimizer steps, and after the last, the history gets
    ``steps``, ``epochs_seen`` (steps / steps per epoch), ``tokens_seen``
    (input tokens, padding included), ``train_losses`` (mean training loss of
    the steps since the previous record: free, but measured while the
    weights moved) and ``val_losses`` (``instruction_loss_loader`` over all of
    ``val_loader``). ``val_loss_before`` is the validation loss before training.
    """
    from tqdm import tqdm

    if num_epochs < 1 or eval_freq < 1:
        raise ValueError(f"num_epochs and eval_freq must be at least 1, got {num_epochs} and {eval_freq}")
    steps_per_epoch = len(train_loader)
    history = {key: [] for key in ("steps", "epochs_seen", "tokens_seen", "train_losses", "val_losses")}
    history["val_loss_before"] = instruction_loss_loader(val_loader, model, device)
    if verbose:
        print(f"before training: val loss {history['val_loss_before']:.3f}")
    total_steps, step, tokens_seen, running = num_epochs * steps_per_epoch, 0, 0, []
    bar = tqdm(total=total_steps, desc="finetuning", unit="step", disable=not progress, file=sys.stderr,
               leave=False)
    for epoch in range(num_epochs):
        model.train()
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            loss = instruction_loss_batch(inputs, targets, model, device)
            loss.backward()
            optimizer.step()
            step += 1
            tokens_seen += inputs.numel()
            running.append(loss.item())
            bar.update(1)
            if step % eval_freq == 0 or step == total_steps:
                val_loss = instruction_loss_loader(val_loader, model, device)
                for key, value in (("steps", step), ("epochs_seen", step / steps_per_epoch),
                                   ("tokens_seen", tokens_seen), ("train_losses", sum(running) / len(running)),
                                   ("val_losses", val_loss)):
                    history[key].append(value)
                running = []
                bar.set_postfix(train=f"{history['train_losses'][-1]:.3f}", val=f"{val_loss:.3f}")
                if verbose:
                    print(f"epoch {epoch + 1} step {step:4d}: train loss {history['train_losses'][-1]:.3f}, "
                          f"val loss {val_loss:.3f}")
    bar.close()
    model.eval()
    return history


def last_token_logits(model, idx: torch.Tensor) -> torch.Tensor:
    """``model(idx)[:, -1, :]``, ``(batch, vocab)``; a ``GPTModel`` runs its output head at the last position only."""
    if not isinstance(model, GPTModel):
        return model(idx)[:, -1, :]
    return model.head(model.backbone(idx)[:, -1, :])


@torch.no_grad()
def generate_response(model, tokenizer, entry: Mapping[str, str], max_new_tokens: int = 64,
                      eos_id: int = PAD_TOKEN_ID, device="cpu") -> str:
    """The model's greedy answer to ``format_input(entry)``: new tokens until ``eos_id``, decoded and stripped.

    The same tokens as ``llm_lib.generate.generate(..., temperature=0,
    eos_id=eos_id)`` after the prompt; only the last ``context_length``
    tokens are read at each step.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    context = model.pos_emb.weight.shape[0]
    idx = torch.tensor([tokenizer.encode(format_input(entry))], device=device)
    new: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            next_id = int(last_token_logits(model, idx[:, -context:]).argmax(dim=-1))
            if next_id == eos_id:
                break
            new.append(next_id)
            idx = torch.cat([idx, torch.tensor([[next_id]], device=device)], dim=1)
    finally:
        model.train(was_training)
    return tokenizer.decode(new).strip()


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(list(entries), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def load_responses(path) -> list[dict]:
    """The list of entries that ``save_responses`` wrote to ``path``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------
# The book's finetuning run (chapter 34), cached so chapter 35 reuses its model
# ----------------------------------------------------------------------------------


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
    eval_freq: int = 20

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
        if self.batch_size < 1 or self.num_epochs < 1 or self.eval_freq < 1:
            raise ValueError("batch_size, num_epochs and eval_freq must be at least 1")
        if self.allowed_max_length is not None and not 1 <= self.allowed_max_length <= self.cfg.context_length:
            raise ValueError(f"allowed_max_length must be in 1..{self.cfg.context_length} (the context length) "
                             f"or None, got {self.allowed_max_length}")

    @classmethod
    def gpt2(cls, size: str = "medium", **overrides) -> InstructionRecipe:
        """Finetune OpenAI's GPT-2 of ``size`` (all weights): lr 5e-5, 2 epochs, unless overridden."""
        cfg = GPTConfig.gpt2(size, context_length=1024, qkv_bias=True, drop_rate=0.0, tie_weights=True)
        settings = dict(cfg=cfg, base=size, lr=5e-5, num_epochs=2, eval_freq=5)
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
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

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

    def build_model(self, device="cpu") -> GPTModel:
        """The starting model: seeded random from ``cfg``, or OpenAI's GPT-2 weights when ``base`` is set."""
        torch.manual_seed(self.seed)
        model = GPTModel(self.cfg)
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
    """Run ``recipe``: build its starting model and train it with AdamW; returns ``(model, history)``."""
    model = recipe.build_model(device)
    train_loader, val_loader = recipe.loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    torch.manual_seed(recipe.seed)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        history = train_instruction_model(model, train_loader, val_loader, optimizer, recipe.num_epochs,
                                          recipe.eval_freq, device, progress=progress, verbose=verbose)
    return model, history


def load_or_finetune(recipe: InstructionRecipe | None = None, device="cpu", progress: bool = True,
                     verbose: bool = False, retrain: bool = False):
    """The model finetuned by ``recipe`` (chapter 34's run by default), loaded from the cache or trained now.

    Returns ``(model, history)`` with the model in eval mode; the cache is
    ``llm_lib.train.checkpoint_path(recipe)``. ``verbose`` prints the training
    log when training happens; ``retrain`` trains even if a checkpoint
    exists. A lock file makes concurrent callers wait for one training run.
    """
    from ..train import load_or_train

    return load_or_train(recipe or InstructionRecipe(), finetune, device, progress, verbose, retrain)


def responses_path(recipe: InstructionRecipe, max_new_tokens: int = 64) -> Path:
    """Where ``load_or_generate_responses`` caches the test responses: beside the checkpoint, as JSON."""
    from ..train import checkpoint_path

    path = checkpoint_path(recipe)
    return path.with_name(f"{path.stem}-test-responses-{max_new_tokens}.json")


def load_or_generate_responses(recipe: InstructionRecipe | None = None, model=None, max_new_tokens: int = 64,
                               device="cpu", progress: bool = True, regenerate: bool = False) -> list[dict]:
    """The test-split entries of ``recipe`` with the finetuned model's ``"model_response"``, cached as JSON.

    ``model`` is the finetuned model (``load_or_finetune(recipe)`` when None).
    Responses are greedy, at most ``max_new_tokens`` tokens; parallel
    callers wait for one run; ``regenerate`` generates them again.
    """
    from ..tokenizer import get_gpt2_encoding
    from ..train import exclusive_lock

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
