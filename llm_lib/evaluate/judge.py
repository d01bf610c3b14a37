"""An LLM as judge (chapter 35): a larger model rates a response from 0 to 100 against a reference.

The judge is served by Ollama or any OpenAI-compatible server at a URL;
``JudgeClient`` talks to it with the standard library's HTTP only, with a
timeout, retries and clear errors, and ``parse_score`` reads the number from
its reply.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "judge_prompt",
    "parse_score",
    "JudgeError",
    "JudgeUnavailableError",
    "JudgeResponseError",
    "JudgeClient",
]


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
