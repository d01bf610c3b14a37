"""Multiple-choice benchmarks in the style of MMLU (chapter 35).

MMLU: Hendrycks et al., "Measuring Massive Multitask Language Understanding",
ICLR 2021. Two ways to score a question:

- by **letter** (``score_multiple_choice``): the model reads the question with
  four lettered choices and ``Answer:``; its answer is the letter ``" A"`` ...
  ``" D"`` to which it gives the highest next-token probability;
- by **cloze** (``score_cloze``): the model reads the question alone and
  ``Answer:``; its answer is the choice whose text is the likeliest
  continuation. A model too small to have learnt the lettered format can
  still show what it knows this way.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..model import autocast_context, eval_mode, logits_at

__all__ = [
    "LETTERS",
    "MMLU_SUBJECTS",
    "MCQuestion",
    "MCResult",
    "read_mmlu_csv",
    "load_mmlu",
    "subsample",
    "format_question",
    "format_prompt",
    "letter_token_ids",
    "padded_last_logits",
    "score_multiple_choice",
    "CLOZE_NORMALIZATIONS",
    "cloze_prompt",
    "ClozeResult",
    "continuation_logprobs",
    "score_cloze",
    "accuracy_by_subject",
    "letter_counts",
]


LETTERS = ("A", "B", "C", "D")
MMLU_SUBJECTS = ("abstract_algebra", "astronomy", "high_school_computer_science", "high_school_geography",
                 "machine_learning")  # the five subjects of the book's MMLU sample
MMLU_SPLITS = ("dev", "val", "test")


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question: four choices and the letter (``"A"``-``"D"``) of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: str
    subject: str = ""

    def __post_init__(self):
        if len(self.choices) != len(LETTERS):
            raise ValueError(f"a question needs {len(LETTERS)} choices, got {len(self.choices)}")
        if self.answer not in LETTERS:
            raise ValueError(f"the answer must be one of {', '.join(LETTERS)}, got {self.answer!r}")


def read_mmlu_csv(source: str | os.PathLike | io.TextIOBase, subject: str = "") -> list[MCQuestion]:
    """Questions from an MMLU CSV file (a path or an open text file).

    Rows have no header: question, the four choices, the answer letter. A
    quoted field may hold newlines (code in a question), which is why this
    uses the csv module rather than splitting lines.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, newline="", encoding="utf-8") as f:
            return read_mmlu_csv(f, subject)
    questions = []
    for row in csv.reader(source):
        if len(row) != len(LETTERS) + 2:
            raise ValueError(f"row {len(questions) + 1} of {getattr(source, 'name', 'the CSV')} has "
                             f"{len(row)} fields; an MMLU row has {len(LETTERS) + 2} (question, "
                             f"{len(LETTERS)} choices, answer)")
        questions.append(MCQuestion(row[0], tuple(row[1:-1]), row[-1].strip(), subject))
    return questions


def load_mmlu(subject: str, split: str = "test") -> list[MCQuestion]:
    """The ``split`` (``"dev"``, ``"val"`` or ``"test"``) questions of one subject of the book's MMLU sample."""
    from ..data_sources import data_path

    if subject not in MMLU_SUBJECTS:
        raise ValueError(f"the book's MMLU sample has no subject {subject!r}; it has {', '.join(MMLU_SUBJECTS)}")
    if split not in MMLU_SPLITS:
        raise ValueError(f"split must be one of {', '.join(MMLU_SPLITS)}, got {split!r}")
    return read_mmlu_csv(data_path(f"mmlu/{split}/{subject}_{split}.csv"), subject)


def subsample(items: Sequence, n: int, seed: int = 123) -> list:
    """``n`` items drawn without replacement with ``seed``, kept in their original order (all if fewer)."""
    if n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def format_question(q: MCQuestion, with_answer: bool = False) -> str:
    """The question, its lettered choices and ``Answer:`` (followed by `` X`` when ``with_answer``)."""
    lines = [q.question.strip()]
    lines += [f"{letter}. {choice.strip()}" for letter, choice in zip(LETTERS, q.choices, strict=True)]
    lines.append(f"Answer: {q.answer}" if with_answer else "Answer:")
    return "\n".join(lines)


def format_prompt(q: MCQuestion, shots: Sequence[MCQuestion] = ()) -> str:
    """The prompt for ``q``: a header naming the subject, solved examples (``shots``), then ``q`` unanswered.

    The layout follows the MMLU paper's: with k shots it is a k-shot prompt.
    """
    about = f" about {q.subject.replace('_', ' ')}" if q.subject else ""
    header = f"The following are multiple choice questions (with answers){about}.\n\n"
    blocks = [format_question(s, with_answer=True) for s in shots] + [format_question(q)]
    return header + "\n\n".join(blocks)


def letter_token_ids(tokenizer, letters: Sequence[str] = LETTERS) -> list[int]:
    """Token ids of ``" A"``, ``" B"``, ...: each letter as it follows ``"Answer:"``, space included.

    GPT-2's BPE attaches a space to the word after it, so ``"Answer: A"`` is
    the tokens ``Answer``, ``:``, `` A``. A prompt that ended with the space
    and scored the bare ``"A"`` would ask about a split that training text
    almost never contains.
    """
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(" " + letter)
        if len(encoded) != 1:
            raise ValueError(f"{' ' + letter!r} is {len(encoded)} tokens for this tokenizer; scoring by "
                             f"answer letter needs each letter to be a single token")
        ids.append(encoded[0])
    return ids


def padded_last_logits(model, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits ``(batch, vocab)`` at the last real token (``lengths[i] - 1``) of each row of ``token_ids``.

    Rows are padded on the right; causal attention keeps the padding from
    affecting earlier positions. The output head (a third of GPT-2 small's
    work per token) runs at those positions only.
    """
    return logits_at(model, token_ids, lengths.to(token_ids.device) - 1)


@dataclass(frozen=True)
class MCResult:
    """The model's view of one question: the log-probability of each letter token, and its pick."""

    subject: str
    answer: str
    predicted: str
    logprobs: tuple[float, ...]  # log P(" A"), ..., over the whole vocabulary
    truncated: int = 0  # prompt tokens dropped on the left to fit the context

    @property
    def correct(self) -> bool:
        """Whether the most likely letter is the right one."""
        return self.predicted == self.answer

    @property
    def letter_mass(self) -> float:
        """Total probability the model puts on the four letter tokens (1.0: it answers nothing else)."""
        return sum(math.exp(lp) for lp in self.logprobs)


@torch.no_grad()
def score_multiple_choice(model, tokenizer, questions: Sequence[MCQuestion],
                          shots: Mapping[str, Sequence[MCQuestion]] | None = None, k: int = 0,
                          batch_size: int = 8, context_length: int | None = None,
                          progress: bool = False,
                          autocast_dtype: torch.dtype | None = None) -> list[MCResult]:
    """Answer each question with the letter whose token is most likely after its prompt; one result each.

    With ``k > 0`` each prompt starts with the first ``k`` questions of
    ``shots[subject]`` (e.g. MMLU's dev split), answered. Prompts longer than
    the context (``model.cfg.context_length`` unless given) lose tokens on the
    left, and the result says how many. Prompts run in batches of similar
    length; ties between letters go to the earliest letter.
    ``autocast_dtype=torch.bfloat16`` runs the model under autocast (chapter
    36): several times faster on CPUs with bfloat16 units, log-probabilities
    within a few hundredths of float32's.
    """
    if k < 0:
        raise ValueError(f"k (the number of solved examples per prompt) must be >= 0, got {k}")
    if k and shots is None:
        raise ValueError(f"k={k} solved examples need `shots`, a mapping from subject to example questions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if context_length is None:
        context_length = getattr(getattr(model, "cfg", None), "context_length", None)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    choice_ids = torch.tensor(letter_token_ids(tokenizer), device=device)

    encoded, truncated = [], []
    for q in questions:
        examples = list(shots.get(q.subject, ()))[:k] if k else []
        if len(examples) < k:
            raise ValueError(f"{k} solved examples asked for, but shots[{q.subject!r}] has {len(examples)}")
        ids = tokenizer.encode(format_prompt(q, examples))
        cut = max(0, len(ids) - context_length) if context_length else 0
        encoded.append(ids[cut:])
        truncated.append(cut)

    logprobs = torch.empty(len(questions), len(LETTERS))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
    from tqdm.auto import tqdm

    with eval_mode(model), autocast_context(device, autocast_dtype):
        for start in tqdm(range(0, len(order), batch_size), desc="questions", unit="batch",
                          disable=not progress, leave=False):
            batch = order[start:start + batch_size]
            lengths = torch.tensor([len(encoded[i]) for i in batch])
            ids = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :lengths[row]] = torch.tensor(encoded[i])
            logits = padded_last_logits(model, ids.to(device), lengths)
            logprobs[batch] = torch.log_softmax(logits.float(), dim=-1)[:, choice_ids].cpu()

    picks = logprobs.argmax(dim=-1).tolist()
    return [MCResult(q.subject, q.answer, LETTERS[p], tuple(lp), cut)
            for q, p, lp, cut in zip(questions, picks, logprobs.tolist(), truncated, strict=True)]


def accuracy_by_subject(results: Sequence[MCResult]) -> dict[str, float]:
    """Fraction answered correctly per subject (subjects in order of appearance), then ``"all"``."""
    if not results:
        raise ValueError("no results to average")
    per: dict[str, list[bool]] = {}
    for r in results:
        per.setdefault(r.subject, []).append(r.correct)
    out = {subject: sum(hits) / len(hits) for subject, hits in per.items()}
    out["all"] = sum(r.correct for r in results) / len(results)
    return out


def letter_counts(results: Sequence[MCResult] | Sequence[MCQuestion], of: str = "predicted") -> dict[str, int]:
    """How often each letter is the model's pick (``of="predicted"``) or the right answer (``of="answer"``).

    For ``of="answer"`` the questions themselves will do, as well as results.
    """
    if of not in ("predicted", "answer"):
        raise ValueError(f"of must be 'predicted' or 'answer', got {of!r}")
    counts = dict.fromkeys(LETTERS, 0)
    for r in results:
        counts[getattr(r, of)] += 1
    return counts


CLOZE_NORMALIZATIONS = ("none", "tokens", "chars")


def cloze_prompt(q: MCQuestion) -> str:
    """The question without its choices, ending in ``Answer:``; each choice's text is scored as the continuation."""
    about = f" about {q.subject.replace('_', ' ')}" if q.subject else ""
    return f"The following are questions{about}.\n\nQuestion: {q.question.strip()}\nAnswer:"


def _cloze_continuation(choice: str) -> str:
    return " " + choice.strip()


@dataclass(frozen=True)
class ClozeResult:
    """The model's view of one question scored by cloze: how likely each choice's text is after the prompt.

    ``normalize`` decides how choices of different lengths are compared:
    ``"none"`` by the total log-probability (which favours short answers),
    ``"tokens"`` by the mean per token, ``"chars"`` by the total per character
    of the text (independent of the tokenizer). ``dataclasses.replace(result,
    normalize=...)`` rescores without running the model again.
    """

    subject: str
    answer: str
    logprobs: tuple[float, ...]  # log P(" " + choice text | prompt), summed over its tokens
    num_tokens: tuple[int, ...]
    num_chars: tuple[int, ...]
    normalize: str = "chars"
    truncated: int = 0  # prompt tokens dropped on the left to fit the context

    def __post_init__(self):
        if self.normalize not in CLOZE_NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {CLOZE_NORMALIZATIONS}, got {self.normalize!r}")

    @property
    def scores(self) -> tuple[float, ...]:
        """One score per choice, higher is likelier, as ``normalize`` compares them."""
        if self.normalize == "tokens":
            return tuple(lp / n for lp, n in zip(self.logprobs, self.num_tokens, strict=True))
        if self.normalize == "chars":
            return tuple(lp / n for lp, n in zip(self.logprobs, self.num_chars, strict=True))
        return self.logprobs

    @property
    def predicted(self) -> str:
        """The letter of the best-scoring choice (ties go to the earliest)."""
        scores = self.scores
        return LETTERS[scores.index(max(scores))]

    @property
    def correct(self) -> bool:
        """Whether the best-scoring choice is the right one."""
        return self.predicted == self.answer


@torch.no_grad()
def continuation_logprobs(model, prompt: list[int],
                          continuations: list[list[int]]) -> list[float]:
    """log P(continuation | prompt) for each continuation, summed over its
    tokens.

    The prompt runs once, into a KV cache; the continuations then run as
    one batch that continues from copies of that cache. The first token of
    each is scored from the prompt's last position.
    """
    device = next(iter(model.parameters())).device
    longest = max(len(c) for c in continuations)
    cache = model.new_kv_cache(len(prompt) + longest - 1)
    ids = torch.tensor([prompt], device=device)
    last = model(ids, kv_cache=cache, positions=-1)[0]
    first = torch.log_softmax(last.float(), dim=-1).cpu()   # (vocab,)
    totals = [first[c[0]].item() for c in continuations]
    if longest == 1:
        return totals
    # All tokens but the last of each continuation, padded to one length:
    # each row's outputs predict that row's next tokens.
    rows = torch.zeros(len(continuations), longest - 1, dtype=torch.long)
    for row, c in enumerate(continuations):
        rows[row, :len(c) - 1] = torch.tensor(c[:-1])
    copies = cache.repeat(len(continuations))
    logits = model(rows.to(device), kv_cache=copies)
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    for row, c in enumerate(continuations):
        steps = torch.arange(len(c) - 1)
        targets = torch.tensor(c[1:], dtype=torch.long)
        totals[row] += logp[row, steps, targets].sum().item()
    return totals


def score_cloze(model, tokenizer, questions: Sequence[MCQuestion], normalize: str = "chars",
                context_length: int | None = None, progress: bool = False,
                autocast_dtype: torch.dtype | None = None) -> list[ClozeResult]:
    """Score each question's four choices as continuations of ``cloze_prompt``; one ``ClozeResult`` each.

    Each choice's text (with its leading space) is scored by
    ``continuation_logprobs``: the prompt runs through the model once, the
    four choices as one batch from a KV cache. ``model`` is one of llm_lib's
    (it needs ``new_kv_cache``). Prompts that do not fit the context together
    with their longest choice lose tokens on the left, and the result says
    how many. ``autocast_dtype`` as for ``score_multiple_choice``.
    """
    if normalize not in CLOZE_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {CLOZE_NORMALIZATIONS}, got {normalize!r}")
    if not hasattr(model, "new_kv_cache"):
        raise TypeError(f"cloze scoring continues a cached prompt, so the model needs new_kv_cache(); "
                        f"{type(model).__name__} has none")
    if context_length is None:
        context_length = model.cfg.context_length
    device = next(iter(model.parameters())).device
    from tqdm.auto import tqdm

    results = []
    with eval_mode(model), autocast_context(device, autocast_dtype):
        for q in tqdm(questions, desc="questions", unit="question", disable=not progress, leave=False):
            texts = [_cloze_continuation(c) for c in q.choices]
            choices = [tokenizer.encode(t) for t in texts]
            longest = max(len(c) for c in choices)
            prompt = tokenizer.encode(cloze_prompt(q))
            cut = max(0, len(prompt) + longest - 1 - context_length)
            if cut >= len(prompt):
                raise ValueError(f"a choice of {longest} tokens leaves no room for the prompt in a context of "
                                 f"{context_length} tokens")
            totals = continuation_logprobs(model, prompt[cut:], choices)
            results.append(ClozeResult(q.subject, q.answer, tuple(totals), tuple(len(c) for c in choices),
                                       tuple(len(t) for t in texts), normalize, cut))
    return results
