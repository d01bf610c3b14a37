"""Evaluating LLMs (chapter 35): multiple-choice benchmarks, an LLM as judge, and human ratings.

- **Multiple choice** in the style of MMLU (Hendrycks et al., "Measuring Massive
  Multitask Language Understanding", ICLR 2021): the model reads a question
  with four lettered choices and ``Answer:``; its answer is the letter
  ``" A"`` ... ``" D"`` it gives the highest next-token probability.
- **LLM as judge**: a larger model, served by Ollama or any OpenAI-compatible
  server at a URL, rates a response from 0 to 100 against a reference answer
  (standard library HTTP only, with a timeout, retries and clear errors).
- **Human evaluation**: a person rates responses shown beside their
  instruction and reference; ``RatingSession`` records the ratings and
  ``rating_widget`` is its ipywidgets front end.
"""

from __future__ import annotations

import csv
import errno
import html
import io
import json
import math
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import torch

from .model import GPTModel

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
    "accuracy_by_subject",
    "letter_counts",
    "judge_prompt",
    "parse_score",
    "JudgeError",
    "JudgeUnavailableError",
    "JudgeResponseError",
    "JudgeClient",
    "RatingSession",
    "comparison_table_html",
    "rating_widget",
]

# ----------------------------------------------------------------------------------
# Multiple-choice questions (MMLU)
# ----------------------------------------------------------------------------------

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
    from .data_sources import data_path

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
    affecting earlier positions. For a ``GPTModel`` the output head (a third
    of GPT-2 small's work per token) runs at those positions only.
    """
    rows = torch.arange(token_ids.shape[0], device=token_ids.device)
    last = lengths.to(token_ids.device) - 1
    if isinstance(model, GPTModel) and type(model).forward is GPTModel.forward:
        return model.head(model.backbone(token_ids)[rows, last])
    return model(token_ids)[rows, last]


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
                          progress: bool = False) -> list[MCResult]:
    """Answer each question with the letter whose token is most likely after its prompt; one result each.

    With ``k > 0`` each prompt starts with the first ``k`` questions of
    ``shots[subject]`` (e.g. MMLU's dev split), answered. Prompts longer than
    the context (``model.cfg.context_length`` unless given) lose tokens on the
    left, and the result says how many. Prompts run in batches of similar
    length; ties between letters go to the earliest letter.
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

    was_training = model.training
    model.eval()
    logprobs = torch.empty(len(questions), len(LETTERS))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
    from tqdm.auto import tqdm

    try:
        for start in tqdm(range(0, len(order), batch_size), desc="questions", unit="batch",
                          disable=not progress, leave=False):
            batch = order[start:start + batch_size]
            lengths = torch.tensor([len(encoded[i]) for i in batch])
            ids = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :lengths[row]] = torch.tensor(encoded[i])
            logits = padded_last_logits(model, ids.to(device), lengths)
            logprobs[batch] = torch.log_softmax(logits.float(), dim=-1)[:, choice_ids].cpu()
    finally:
        model.train(was_training)

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


# ----------------------------------------------------------------------------------
# LLM as judge
# ----------------------------------------------------------------------------------


def judge_prompt(instruction: str, response: str, reference: str, input_text: str = "") -> str:
    """A prompt asking a judge model for one integer from 0 to 100 rating ``response`` against ``reference``."""
    task = instruction.strip() + (f"\n\nInput:\n{input_text.strip()}" if input_text.strip() else "")
    return (
        "You are grading an AI assistant. Read the task, a reference answer written by a person, "
        "and the assistant's response. Rate the response on a scale from 0 to 100: 100 means it is "
        "correct and complete, as good as the reference; 50 means partly right; 0 means wrong, "
        "off-topic or empty. Judge the content, not the length.\n\n"
        f"### Task\n{task}\n\n"
        f"### Reference answer\n{reference.strip()}\n\n"
        f"### Assistant's response\n{response.strip()}\n\n"
        "Reply with the score only: a single integer from 0 to 100."
    )


_NUMBER = r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)"
_SCALE = re.compile(r"\b0\s*(?:-|–|to)\s*100\b|/\s*100\b|\bout of 100\b", re.IGNORECASE)
_FRACTION = re.compile(r"\d+(?:\.\d+)?\s*/\s*(\d+(?:\.\d+)?)")  # "7/10": a score out of 10
_LABELLED = re.compile(r"\bscore\b\W{0,3}(?:is|of|=)?\W{0,3}(" + _NUMBER + ")", re.IGNORECASE)


def parse_score(text: str, low: int = 0, high: int = 100) -> int:
    """The judge's score in ``text``: a bare number, a ``Score: N``, or the only number in it.

    Mentions of the scale ("0 to 100", "/100") are ignored; a reply with no
    number, several different numbers, one outside ``[low, high]`` or a
    score on another scale ("7/10") raises ``JudgeResponseError`` quoting
    the reply.
    """
    reply = text.strip()
    shown = reply if len(reply) <= 200 else reply[:200] + "..."
    other_scale = [m.group(0) for m in _FRACTION.finditer(reply) if float(m.group(1)) != high]
    if other_scale:
        raise JudgeResponseError(f"the judge scored on another scale ({other_scale[0]}), not {low}-{high}: {shown!r}")
    labelled = _LABELLED.findall(reply)
    if re.fullmatch(_NUMBER, reply):
        numbers = [reply]
    elif labelled:
        numbers = labelled[-1:]
    else:
        numbers = sorted(set(re.findall(_NUMBER, _SCALE.sub(" ", reply))), key=reply.find)
    if not numbers:
        raise JudgeResponseError(f"the judge's reply holds no score: {shown!r}")
    if len(numbers) > 1:
        raise JudgeResponseError(f"the judge's reply holds several numbers ({', '.join(numbers)}), so its "
                                 f"score is ambiguous: {shown!r}")
    value = float(numbers[0])
    if not low <= value <= high:
        raise JudgeResponseError(f"the judge's score {numbers[0]} is outside [{low}, {high}]: {shown!r}")
    return round(value)


class JudgeError(RuntimeError):
    """The judge server answered, but not with something usable (an HTTP error, say)."""


class JudgeUnavailableError(JudgeError):
    """Nothing answered at the judge's URL: no server there, or it did not reply in time."""


class JudgeResponseError(JudgeError):
    """The judge replied, but the reply holds no valid score or is not the JSON its API promises."""


_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # busy or overloaded: worth another try
_API_STYLES = ("auto", "ollama", "openai")


def _nobody_listening(reason) -> bool:
    """A refused connection or an unknown host: no server there, which no retry will change."""
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return True
    return isinstance(reason, OSError) and reason.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                           errno.ENETUNREACH, errno.EADDRNOTAVAIL)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        error = json.loads(body).get("error", body)
        body = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        pass
    return body.strip()[:300]


@dataclass
class JudgeClient:
    """A judge model behind a URL: Ollama (``/api/chat`` or ``/api/generate``) or OpenAI-compatible.

    ``url`` is a server's base URL or a full endpoint:
    ``http://localhost:11434`` (Ollama, chat endpoint),
    ``http://localhost:11434/api/generate``, ``http://localhost:8000/v1``
    (OpenAI-compatible: vLLM, llama.cpp's server, LM Studio) or a full
    ``.../v1/chat/completions``. With ``api="auto"`` a base URL without
    ``/v1`` means Ollama. Each request waits ``timeout`` seconds; timeouts,
    dropped connections and busy answers (429, 5xx) are retried ``retries``
    times, waiting ``backoff``, ``2 * backoff``, ... seconds. A refused
    connection is not retried: nobody listens there.
    """

    url: str
    model: str
    api: str = "auto"
    timeout: float = 60.0
    retries: int = 2
    backoff: float = 1.0
    temperature: float = 0.0
    api_key: str | None = field(default=None, repr=False)
    endpoint: str = field(init=False)  # the URL requests go to
    style: str = field(init=False)  # "ollama-chat", "ollama-generate" or "openai"

    def __post_init__(self):
        if self.api not in _API_STYLES:
            raise ValueError(f"api must be one of {', '.join(_API_STYLES)}, got {self.api!r}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ValueError(f"need timeout > 0, retries >= 0 and backoff >= 0; got timeout={self.timeout}, "
                             f"retries={self.retries}, backoff={self.backoff}")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the judge URL must look like http://host:port[/path], got {self.url!r}")
        base, path = self.url.rstrip("/"), parts.path.rstrip("/")
        if path.endswith(("/api/chat", "/api/generate")):
            style, self.endpoint = "ollama-" + path.rsplit("/", 1)[1], base
        elif path.endswith("/chat/completions"):
            style, self.endpoint = "openai", base
        elif path.endswith("/v1") or self.api == "openai":
            style = "openai"
            self.endpoint = base + ("/chat/completions" if path.endswith("/v1") else "/v1/chat/completions")
        else:
            style, self.endpoint = "ollama-chat", base + "/api/chat"
        if self.api != "auto" and not style.startswith(self.api):
            raise ValueError(f"api={self.api!r} does not fit the URL {self.url!r}, which is an {style} endpoint")
        self.style = style

    def payload(self, prompt: str) -> dict:
        """The JSON body that asks this endpoint to answer ``prompt`` (one user message, no streaming)."""
        if self.style == "ollama-generate":
            return {"model": self.model, "prompt": prompt, "stream": False,
                    "options": {"temperature": self.temperature}}
        messages = [{"role": "user", "content": prompt}]
        if self.style == "ollama-chat":
            return {"model": self.model, "messages": messages, "stream": False,
                    "options": {"temperature": self.temperature}}
        return {"model": self.model, "messages": messages, "temperature": self.temperature}

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "llm_lib"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem, http_status = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code not in _RETRY_STATUS:
                    raise JudgeError(f"the judge at {self.endpoint} answered HTTP {exc.code}: {detail}") from None
                problem, http_status = f"HTTP {exc.code}: {detail}", exc.code
                continue
            except OSError as exc:  # URLError, timeouts and dropped connections are all OSErrors
                reason = getattr(exc, "reason", exc)
                if _nobody_listening(reason):
                    start = (f"`ollama serve`, then `ollama pull {self.model}`" if self.style.startswith("ollama")
                             else "e.g. `vllm serve MODEL` or llama.cpp's `llama-server`")
                    raise JudgeUnavailableError(f"no judge server answered at {self.url} ({reason}); start one "
                                                f"({start}) or set the URL of a running server") from None
                problem, http_status = f"{type(reason).__name__}: {reason}", None
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise JudgeResponseError(f"the judge at {self.endpoint} did not answer with JSON: "
                                         f"{raw[:200]!r}") from None
        attempts = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
        if http_status is not None:
            raise JudgeError(f"the judge at {self.endpoint} was still busy after {attempts} ({problem})")
        raise JudgeUnavailableError(f"the judge at {self.endpoint} did not answer within {self.timeout:g} s "
                                    f"in {attempts} ({problem})")

    def complete(self, prompt: str) -> str:
        """The judge model's reply to ``prompt``."""
        data = self._post(self.payload(prompt))
        try:
            if self.style == "ollama-generate":
                text = data["response"]
            elif self.style == "ollama-chat":
                text = data["message"]["content"]
            else:
                text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeResponseError(f"the reply of {self.endpoint} lacks the text where the {self.style} API "
                                     f"puts it: {json.dumps(data)[:200]}") from None
        if not isinstance(text, str):
            raise JudgeResponseError(f"the reply of {self.endpoint} holds {type(text).__name__}, not text")
        return text

    def score(self, instruction: str, response: str, reference: str, input_text: str = "") -> int:
        """The judge's 0-100 rating of ``response`` to ``instruction`` (with ``input_text``) against ``reference``."""
        return parse_score(self.complete(judge_prompt(instruction, response, reference, input_text)))


# ----------------------------------------------------------------------------------
# Human evaluation
# ----------------------------------------------------------------------------------


class RatingSession:
    """A person's ratings of model responses, one per entry (``{index: rating}``), saved as JSON.

    ``entries`` are dicts with ``"instruction"``, optionally ``"input"``, the
    reference answer under ``reference_key`` and the model's response under
    ``response_key``. ``position`` is the entry on show; ``rate`` records a
    rating for it and moves on.
    """

    def __init__(self, entries: Sequence[Mapping], response_key: str = "model_response",
                 reference_key: str = "output", scale: Sequence[int] = (1, 2, 3, 4, 5), rater: str = ""):
        if not entries:
            raise ValueError("nothing to rate: entries is empty")
        for i, entry in enumerate(entries):
            missing = [key for key in ("instruction", reference_key, response_key) if key not in entry]
            if missing:
                raise KeyError(f"entry {i} lacks {', '.join(missing)} (it has {', '.join(entry)})")
        if len(scale) < 2:
            raise ValueError(f"a rating scale needs at least two values, got {list(scale)}")
        self.entries = list(entries)
        self.response_key, self.reference_key = response_key, reference_key
        self.scale, self.rater = tuple(scale), rater
        self.ratings: dict[int, int] = {}
        self.notes: dict[int, str] = {}
        self.position = 0

    def __len__(self) -> int:
        return len(self.entries)

    def go_to(self, index: int) -> None:
        """Show entry ``index`` (clipped to the first and last entry)."""
        self.position = min(max(index, 0), len(self.entries) - 1)

    def rate(self, rating: int, index: int | None = None, note: str = "") -> None:
        """Record ``rating`` for entry ``index`` (the one on show by default), then show the next entry."""
        if rating not in self.scale:
            raise ValueError(f"rating {rating!r} is not on the scale {list(self.scale)}")
        index = self.position if index is None else index
        if not 0 <= index < len(self.entries):
            raise IndexError(f"entry {index} does not exist; there are {len(self.entries)} entries")
        self.ratings[index] = rating
        if note.strip():
            self.notes[index] = note.strip()
        else:
            self.notes.pop(index, None)
        self.go_to(index + 1)

    @property
    def done(self) -> bool:
        """Whether every entry has a rating."""
        return len(self.ratings) == len(self.entries)

    def mean(self) -> float:
        """Mean rating over the rated entries."""
        if not self.ratings:
            raise ValueError("no ratings yet")
        return sum(self.ratings.values()) / len(self.ratings)

    def records(self) -> list[dict]:
        """One dict per rated entry, in entry order: index, texts, rating and note."""
        return [{"index": i, "instruction": self.entries[i]["instruction"],
                 "input": self.entries[i].get("input", ""), "reference": self.entries[i][self.reference_key],
                 "response": self.entries[i][self.response_key], "rating": self.ratings[i],
                 "note": self.notes.get(i, "")} for i in sorted(self.ratings)]

    def to_json(self) -> str:
        """The session as JSON: rater, scale, number of entries and the ``records``."""
        return json.dumps({"rater": self.rater, "scale": list(self.scale), "num_entries": len(self.entries),
                           "ratings": self.records()}, indent=2, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``to_json()`` to ``path``; returns the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path


_CELL = "padding:6px 8px;vertical-align:top;white-space:pre-wrap;text-align:left;border-top:1px solid #ddd"


def _task_text(entry: Mapping) -> str:
    extra = entry.get("input", "")
    return entry["instruction"] + (f"\n\nInput: {extra}" if extra else "")


def comparison_table_html(entries: Sequence[Mapping], response_key: str = "model_response",
                          reference_key: str = "output", extra_columns: Mapping[str, Sequence] | None = None,
                          max_chars: int = 400) -> str:
    """An HTML table: instruction (with input), reference and response side by side, one row per entry.

    ``extra_columns`` adds columns such as ``{"rating": [...]}`` (one value per
    entry; ``None`` shows as a dash). Texts longer than ``max_chars`` are cut.
    """
    extra_columns = dict(extra_columns or {})
    for name, values in extra_columns.items():
        if len(values) != len(entries):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(entries)} entries")

    def cell(text) -> str:
        text = "–" if text is None else str(text)
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
        return f'<td style="{_CELL}">{html.escape(text)}</td>'

    heads = ["#", "instruction", "reference", "model response", *extra_columns]
    rows = ["<tr>" + "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in heads) + "</tr>"]
    for i, entry in enumerate(entries):
        values = [i + 1, _task_text(entry), entry[reference_key], entry[response_key],
                  *(column[i] for column in extra_columns.values())]
        rows.append("<tr>" + "".join(cell(v) for v in values) + "</tr>")
    return ('<table style="border-collapse:collapse;width:100%;font-size:0.9em">'
            + "".join(rows) + "</table>")


def _entry_html(session: RatingSession) -> str:
    i = session.position
    entry = session.entries[i]
    rated = session.ratings.get(i)
    panels = [("Instruction", _task_text(entry)), ("Reference", entry[session.reference_key]),
              ("Model response", entry[session.response_key])]
    boxes = "".join(
        f'<div style="flex:1;min-width:0;padding:8px;border:1px solid #ccc;border-radius:4px">'
        f'<b>{title}</b><div style="white-space:pre-wrap;margin-top:4px">{html.escape(str(text))}</div></div>'
        for title, text in panels)
    status = f"rated {rated}" if rated is not None else "not rated yet"
    return (f"<div><b>Entry {i + 1} of {len(session)}</b> ({status}; {len(session.ratings)} rated in all)</div>"
            f'<div style="display:flex;gap:8px;margin-top:6px">{boxes}</div>')


def rating_widget(session: RatingSession):
    """An ipywidgets panel for ``session``: instruction, reference and response side by side, a button per rating.

    Clicking a rating records it (with the optional note) and shows the next
    entry; "back" and "next" move without rating. The ratings live in
    ``session`` (``session.ratings``, ``session.save(path)``).
    """
    import ipywidgets as widgets

    view = widgets.HTML()
    note = widgets.Text(placeholder="optional note on this response", layout=widgets.Layout(width="60%"))
    rate_buttons = [widgets.Button(description=str(value), layout=widgets.Layout(width="48px"),
                                   tooltip=f"rate {value} (scale {session.scale[0]} = worst, "
                                           f"{session.scale[-1]} = best)")
                    for value in session.scale]
    back = widgets.Button(description="◀ back", layout=widgets.Layout(width="80px"))
    forward = widgets.Button(description="next ▶", layout=widgets.Layout(width="80px"))

    def show() -> None:
        view.value = _entry_html(session)
        note.value = session.notes.get(session.position, "")
        for button, value in zip(rate_buttons, session.scale, strict=True):
            button.button_style = "primary" if session.ratings.get(session.position) == value else ""

    def on_rate(value: int) -> None:
        session.rate(value, note=note.value)
        show()

    def on_move(step: int) -> None:
        session.go_to(session.position + step)
        show()

    for button, value in zip(rate_buttons, session.scale, strict=True):
        button.on_click(lambda _, value=value: on_rate(value))
    back.on_click(lambda _: on_move(-1))
    forward.on_click(lambda _: on_move(+1))
    show()
    label = widgets.Label(f"rating ({session.scale[0]} worst, {session.scale[-1]} best):")
    return widgets.VBox([view, widgets.HBox([label, *rate_buttons, back, forward]), note])
