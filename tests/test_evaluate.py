"""Evaluation: MMLU-style letter scoring on hand-made models, the judge client against fake servers, ratings."""

import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from llm_lib.evaluate import (
    LETTERS,
    ClozeResult,
    JudgeClient,
    JudgeError,
    JudgeResponseError,
    JudgeUnavailableError,
    MCQuestion,
    MCResult,
    RatingSession,
    accuracy_by_subject,
    cloze_prompt,
    comparison_table_html,
    format_prompt,
    judge_prompt,
    letter_counts,
    letter_token_ids,
    load_mmlu,
    padded_last_logits,
    parse_score,
    rating_widget,
    read_mmlu_csv,
    score_cloze,
    score_multiple_choice,
    subsample,
)
from llm_lib.fast import FastGPTModel
from llm_lib.llama import LlamaConfig, LlamaModel
from llm_lib.model import GPTConfig, select_positions
from llm_lib.tokenizer import get_gpt2_encoding

TOKENIZER = get_gpt2_encoding()
VOCAB = TOKENIZER.n_vocab
LETTER_IDS = [317, 347, 327, 360]  # " A", " B", " C", " D" in GPT-2's vocabulary


def question(text="What is 2 + 2?", answer="B", subject="arithmetic"):
    return MCQuestion(text, ("3", "4", "5", "22"), answer, subject)


# ----------------------------------------------------------------------------------
# Reading and formatting
# ----------------------------------------------------------------------------------


def test_read_mmlu_csv_keeps_quoted_newlines():
    text = ('"What does this print?\nprint(1 + 1)",1,2,11,an error,B\n'
            'Which planet is largest?,Mars,Venus,Jupiter,Earth,C\n')
    questions = read_mmlu_csv(io.StringIO(text), subject="demo")
    assert len(questions) == 2
    assert questions[0].question == "What does this print?\nprint(1 + 1)"
    assert questions[0].choices == ("1", "2", "11", "an error") and questions[0].answer == "B"
    assert questions[1] == MCQuestion("Which planet is largest?", ("Mars", "Venus", "Jupiter", "Earth"), "C", "demo")


def test_read_mmlu_csv_names_a_bad_row():
    with pytest.raises(ValueError, match="row 2 .* 3 fields"):
        read_mmlu_csv(io.StringIO("q,a,b,c,d,A\nq,a,b\n"))
    with pytest.raises(ValueError, match="one of A, B, C, D"):
        read_mmlu_csv(io.StringIO("q,a,b,c,d,E\n"))


def test_load_mmlu_sample():
    astronomy = load_mmlu("astronomy")
    assert len(astronomy) == 152 and all(q.subject == "astronomy" for q in astronomy)
    code = load_mmlu("high_school_computer_science")
    assert sum("\n" in q.question for q in code) > 0  # questions with code span lines
    assert len(load_mmlu("machine_learning", "dev")) == 5
    with pytest.raises(ValueError, match="astronomy"):
        load_mmlu("cooking")
    with pytest.raises(ValueError, match="dev, val, test"):
        load_mmlu("astronomy", "train")


def test_format_prompt_zero_and_one_shot():
    q = question()
    assert format_prompt(q) == (
        "The following are multiple choice questions (with answers) about arithmetic.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    shot = MCQuestion("What is 1 + 1?", ("2", "3", "4", "5"), "A", "arithmetic")
    assert format_prompt(q, [shot]).split("\n\n")[1] == "What is 1 + 1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A"


def test_letter_tokens_carry_the_space():
    assert letter_token_ids(TOKENIZER) == LETTER_IDS
    assert TOKENIZER.encode("Answer: C")[-1] == LETTER_IDS[2]  # the token that follows "Answer:"
    assert TOKENIZER.encode("C") != [LETTER_IDS[2]]
    with pytest.raises(ValueError, match="single token"):
        letter_token_ids(TOKENIZER, ["Xqzv"])


def test_subsample_is_seeded_and_ordered():
    items = list(range(20))
    picked = subsample(items, 5, seed=1)
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert picked == subsample(items, 5, seed=1) and picked != subsample(items, 5, seed=2)
    assert subsample(items, 50) == items


# ----------------------------------------------------------------------------------
# Scoring on models whose answers we control
# ----------------------------------------------------------------------------------


class FixedLetterModel(nn.Module):
    """Every position gives the letter tokens the logits ``letter_logits`` and every other token 0."""

    def __init__(self, letter_logits):
        super().__init__()
        self.logits = torch.zeros(VOCAB)
        self.logits[LETTER_IDS] = torch.tensor(letter_logits)

    def forward(self, ids, positions=None):  # positions: as llm_lib's models take them
        return select_positions(self.logits.expand(*ids.shape, VOCAB), positions)


class PositionModel(nn.Module):
    """Prefers ``LETTERS[t % 4]`` at position t (logit 5, others 0): its answer depends on the prompt's length."""

    def __init__(self, context_length=None):
        super().__init__()
        self.context_length = context_length

    def forward(self, ids, positions=None):
        if self.context_length is not None:
            assert ids.shape[1] <= self.context_length
        logits = torch.zeros(*ids.shape, VOCAB)
        for t in range(ids.shape[1]):
            logits[:, t, LETTER_IDS[t % 4]] = 5.0
        return select_positions(logits, positions)


def test_scorer_on_a_hand_made_example():
    model = FixedLetterModel([1.0, 0.0, 3.0, 2.0])  # " C" is the most likely letter
    questions = [question(answer="C"), question(answer="A"), question("Is 7 prime?", "C", "primes")]
    results = score_multiple_choice(model, TOKENIZER, questions)
    # By hand: log P(letter) = logit - log(sum of exp over the vocabulary); all other tokens have logit 0.
    log_z = math.log(VOCAB - 4 + math.exp(1) + math.exp(0) + math.exp(3) + math.exp(2))
    expected = [1.0 - log_z, 0.0 - log_z, 3.0 - log_z, 2.0 - log_z]
    for r in results:
        assert r.predicted == "C"
        assert r.logprobs == pytest.approx(expected, abs=1e-4)  # float32 over 50,257 tokens
        assert r.letter_mass == pytest.approx(sum(math.exp(x) for x in expected), rel=1e-4)
    assert [r.correct for r in results] == [True, False, True]
    assert accuracy_by_subject(results) == {"arithmetic": 0.5, "primes": 1.0, "all": pytest.approx(2 / 3)}
    assert letter_counts(results) == {"A": 0, "B": 0, "C": 3, "D": 0}
    assert letter_counts(results, of="answer") == {"A": 1, "B": 0, "C": 2, "D": 0}
    assert letter_counts(questions, of="answer") == {"A": 1, "B": 0, "C": 2, "D": 0}


def test_scorer_reads_each_prompts_last_position_in_padded_batches():
    questions = [question("?" * n, LETTERS[n % 4]) for n in (1, 5, 12, 30, 31)]
    lengths = [len(TOKENIZER.encode(format_prompt(q))) for q in questions]
    assert len(set(lengths)) > 2  # different lengths, so batches are padded
    expected = [LETTERS[(n - 1) % 4] for n in lengths]  # the letter preferred at the last position
    for batch_size in (1, 2, 5):
        results = score_multiple_choice(PositionModel(), TOKENIZER, questions, batch_size=batch_size)
        assert [r.predicted for r in results] == expected


def test_prompts_longer_than_the_context_lose_their_start():
    q = question("word " * 80)
    n = len(TOKENIZER.encode(format_prompt(q)))
    (result,) = score_multiple_choice(PositionModel(context_length=32), TOKENIZER, [q], context_length=32)
    assert result.truncated == n - 32 and result.predicted == LETTERS[31 % 4]


def test_k_shot_prompts_use_the_shots():
    shots = {"arithmetic": [question("What is 1 + 1?", "A"), question("What is 3 + 3?", "D")]}
    q = question()
    one = len(TOKENIZER.encode(format_prompt(q, shots["arithmetic"][:1])))
    (result,) = score_multiple_choice(PositionModel(), TOKENIZER, [q], shots=shots, k=1)
    assert result.predicted == LETTERS[(one - 1) % 4]
    with pytest.raises(ValueError, match="has 2"):
        score_multiple_choice(PositionModel(), TOKENIZER, [q], shots=shots, k=3)
    with pytest.raises(ValueError, match="need `shots`"):
        score_multiple_choice(PositionModel(), TOKENIZER, [q], k=1)


def test_tiny_gpt_smoke():
    cfg = GPTConfig(vocab_size=VOCAB, context_length=64, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1)
    model = FastGPTModel(cfg)
    model.train()
    questions = load_mmlu("abstract_algebra")[:6]
    results = score_multiple_choice(model, TOKENIZER, questions, batch_size=4)
    assert model.training  # the mode is restored
    again = score_multiple_choice(model, TOKENIZER, questions, batch_size=1)
    for a, b in zip(results, again, strict=True):
        assert a.predicted == b.predicted and a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert all(lp < 0 for lp in a.logprobs) and 0 < a.letter_mass < 1
        assert a.truncated > 0 or len(TOKENIZER.encode(format_prompt(questions[0]))) <= 64
    # the output head at the last positions only gives the same logits as the full forward pass
    model.eval()
    ids = torch.randint(0, VOCAB, (3, 10))
    lengths = torch.tensor([10, 4, 7])
    with torch.no_grad():
        full = model(ids)[torch.arange(3), lengths - 1]
        assert torch.allclose(padded_last_logits(model, ids, lengths), full, atol=1e-5)


# ----------------------------------------------------------------------------------
# Cloze scoring: the choices' texts as continuations of one cached prompt
# ----------------------------------------------------------------------------------

TINY_GPT = GPTConfig(vocab_size=VOCAB, context_length=96, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
TINY_LLAMA = LlamaConfig(vocab_size=VOCAB, context_length=96, emb_dim=48, n_heads=6, n_kv_heads=2, n_layers=2,
                         hidden_dim=64)


def cloze_by_hand(model, q):
    """Each choice's log-probability from one plain forward pass over prompt + choice, no cache, no batch."""
    prompt = TOKENIZER.encode(cloze_prompt(q))
    totals = []
    for choice in q.choices:
        cont = TOKENIZER.encode(" " + choice.strip())
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0], dim=-1)
        totals.append(sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(cont)))
    return totals


@pytest.mark.parametrize("make", [lambda: FastGPTModel(TINY_GPT), lambda: LlamaModel(TINY_LLAMA)],
                         ids=["gpt2", "llama"])
def test_cloze_from_a_cached_prompt_equals_one_pass_per_choice(make):
    torch.manual_seed(0)
    model = make().eval()
    questions = [MCQuestion("Which planet is largest?", ("Jupiter", "the planet Saturn, with rings", "Mars", "x"),
                            "A", "astronomy"), question()]
    results = score_cloze(model, TOKENIZER, questions, normalize="none")
    for q, r in zip(questions, results, strict=True):
        assert r.logprobs == pytest.approx(cloze_by_hand(model, q), abs=1e-4)
        assert r.num_tokens == tuple(len(TOKENIZER.encode(" " + c)) for c in q.choices)
        assert r.num_chars == tuple(len(c) + 1 for c in q.choices) and r.truncated == 0
        assert r.predicted == LETTERS[max(range(4), key=lambda i: r.logprobs[i])]


def test_cloze_normalizations_and_rescoring():
    import dataclasses

    r = ClozeResult("s", "B", logprobs=(-4.0, -9.0, -8.0, -25.0), num_tokens=(1, 6, 2, 10),
                    num_chars=(4, 30, 8, 100), normalize="none")
    assert r.predicted == "A"                                                  # shortest wins the sum
    assert dataclasses.replace(r, normalize="tokens").predicted == "B"         # -1.5 per token
    assert dataclasses.replace(r, normalize="chars").predicted == "D"          # -0.25 per character
    assert dataclasses.replace(r, normalize="chars").correct is False and r.correct is False
    with pytest.raises(ValueError, match="normalize must be one of"):
        dataclasses.replace(r, normalize="bytes")
    with pytest.raises(ValueError, match="normalize must be one of"):
        score_cloze(FastGPTModel(TINY_GPT), TOKENIZER, [question()], normalize="mean")


def test_cloze_prompt_cut_on_the_left_to_fit_the_context():
    torch.manual_seed(0)
    model = FastGPTModel(TINY_GPT).eval()
    q = question("word " * 200)
    n = len(TOKENIZER.encode(cloze_prompt(q)))
    longest = max(len(TOKENIZER.encode(" " + c)) for c in q.choices)
    (r,) = score_cloze(model, TOKENIZER, [q])
    assert r.truncated == n + longest - 1 - TINY_GPT.context_length
    long_choice = MCQuestion("?", ("a " * 120, "b", "c", "d"), "A")
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        score_cloze(model, TOKENIZER, [long_choice])
    with pytest.raises(TypeError, match="needs new_kv_cache"):
        score_cloze(FixedLetterModel([0.0] * 4), TOKENIZER, [q], context_length=64)


def test_a_repeated_kv_cache_continues_each_copy_like_the_original():
    torch.manual_seed(0)
    model = FastGPTModel(TINY_GPT).eval()
    prompt = torch.randint(0, VOCAB, (2, 7))
    more = torch.randint(0, VOCAB, (6, 3))      # rows 0-2 continue prompt 0, rows 3-5 prompt 1
    with torch.no_grad():
        cache = model.new_kv_cache(10)
        model(prompt, kv_cache=cache)
        batched = model(more, kv_cache=cache.repeat(3))
        for row in range(6):
            alone = model(torch.cat([prompt[row // 3], more[row]])[None])[0, -3:]
            assert torch.allclose(batched[row], alone, atol=1e-5)
    assert cache.length == 7    # the original is untouched
    with pytest.raises(ValueError, match="copies must be at least 1"):
        cache.repeat(0)


def test_accuracy_needs_results():
    with pytest.raises(ValueError, match="no results"):
        accuracy_by_subject([])
    with pytest.raises(ValueError, match="predicted"):
        letter_counts([MCResult("s", "A", "B", (0.0,) * 4)], of="subject")


# ----------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------


def test_judge_prompt():
    prompt = judge_prompt("Name a prime.", "Seven.", "7", input_text="")
    assert "Name a prime." in prompt and "Seven." in prompt and "### Reference answer\n7" in prompt
    assert "Input:" not in prompt and prompt.endswith("a single integer from 0 to 100.")
    assert "Input:\n2, 3, 4" in judge_prompt("Pick the even one.", "4", "4", input_text="2, 3, 4")


@pytest.mark.parametrize("reply, score", [
    ("85", 85), (" 100\n", 100), ("0", 0), ("Score: 70", 70), ("I would give it 85/100.", 85),
    ("On a scale from 0 to 100, I rate this 40.", 40), ("The score is 92.", 92), ("72.6", 73),
    ("Reasoning: 3 facts are wrong.\nScore: 15", 15),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply, message", [
    ("Great answer!", "no score"), ("", "no score"), ("150", "outside"), ("-5", "outside"),
    ("between 60 and 70", "several numbers"), ("7/10", "another scale"), ("Score: 4 / 5", "another scale"),
])
def test_parse_score_rejects_garbage(reply, message):
    with pytest.raises(JudgeResponseError, match=message):
        parse_score(reply)


@pytest.mark.parametrize("url, api, endpoint, style", [
    ("http://localhost:11434", "auto", "http://localhost:11434/api/chat", "ollama-chat"),
    ("http://localhost:11434/", "ollama", "http://localhost:11434/api/chat", "ollama-chat"),
    ("http://h:1/api/generate", "auto", "http://h:1/api/generate", "ollama-generate"),
    ("http://h:8000/v1", "auto", "http://h:8000/v1/chat/completions", "openai"),
    ("http://h:8000", "openai", "http://h:8000/v1/chat/completions", "openai"),
    ("https://h/v1/chat/completions", "auto", "https://h/v1/chat/completions", "openai"),
])
def test_judge_endpoints(url, api, endpoint, style):
    client = JudgeClient(url, "judge", api=api)
    assert (client.endpoint, client.style) == (endpoint, style)


def test_judge_rejects_bad_settings():
    with pytest.raises(ValueError, match="http://host"):
        JudgeClient("localhost:11434", "m")
    with pytest.raises(ValueError, match="api must be"):
        JudgeClient("http://h:1", "m", api="anthropic")
    with pytest.raises(ValueError, match="does not fit"):
        JudgeClient("http://h:1/v1", "m", api="ollama")
    with pytest.raises(ValueError, match="timeout"):
        JudgeClient("http://h:1", "m", timeout=0)
    assert "secret" not in repr(JudgeClient("http://h:1", "m", api_key="secret"))


def test_judge_at_an_unreachable_url_fails_fast_and_clearly():
    # Port 9 (discard) on localhost refuses connections: no server there, so no retry either.
    client = JudgeClient("http://127.0.0.1:9", "llama3.2", retries=3, backoff=2.0, timeout=5)
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailableError) as err:
        client.score("Name a prime.", "7", "7")
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "http://127.0.0.1:9" in message and "ollama serve" in message and "\n" not in message


class FakeServer:
    """A local HTTP server whose answers a test scripts: a list of (status, body, delay) served in turn."""

    def __init__(self):
        self.answers, self.requests = [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append((self.path, json.loads(body), self.headers.get("Authorization")))
                status, payload, delay = server.answers.pop(0) if server.answers else (500, "no answer", 0)
                time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def test_judge_with_ollama_chat(server):
    server.answers = [(200, {"model": "llama3.2", "message": {"role": "assistant", "content": "80"}, "done": True}, 0)]
    client = JudgeClient(server.url, "llama3.2")
    assert client.score("Name a prime.", "Seven", "7") == 80
    path, body, _ = server.requests[0]
    assert path == "/api/chat" and body["model"] == "llama3.2" and body["stream"] is False
    assert body["messages"][0]["role"] == "user" and "Seven" in body["messages"][0]["content"]


def test_judge_with_ollama_generate(server):
    server.answers = [(200, {"model": "m", "response": "Score: 35", "done": True}, 0)]
    assert JudgeClient(server.url + "/api/generate", "m").score("Task", "resp", "ref") == 35
    path, body, _ = server.requests[0]
    assert path == "/api/generate" and "resp" in body["prompt"]


def test_judge_with_openai_api(server):
    server.answers = [(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "95"}}]}, 0)]
    client = JudgeClient(server.url + "/v1", "qwen", api_key="sk-test")
    assert client.score("Task", "resp", "ref") == 95
    path, body, auth = server.requests[0]
    assert path == "/v1/chat/completions" and body["temperature"] == 0.0 and auth == "Bearer sk-test"


def test_judge_retries_when_busy(server):
    server.answers = [(503, {"error": "loading model"}, 0), (503, {"error": "loading model"}, 0),
                      (200, {"message": {"content": "60"}}, 0)]
    assert JudgeClient(server.url, "m", retries=2, backoff=0).score("t", "r", "x") == 60
    assert len(server.requests) == 3


def test_judge_gives_up_after_its_retries(server):
    server.answers = [(503, {"error": "loading model"}, 0)] * 2
    with pytest.raises(JudgeError, match="still busy after 2 attempts .*loading model"):
        JudgeClient(server.url, "m", retries=1, backoff=0).score("t", "r", "x")


def test_judge_reports_a_client_error_at_once(server):
    server.answers = [(404, {"error": "model 'nope' not found, try pulling it first"}, 0)]
    with pytest.raises(JudgeError, match="HTTP 404: model 'nope' not found") as err:
        JudgeClient(server.url, "nope", retries=3, backoff=0).score("t", "r", "x")
    assert not isinstance(err.value, JudgeUnavailableError) and len(server.requests) == 1


def test_judge_timeout(server):
    server.answers = [(200, {"message": {"content": "50"}}, 1.0)] * 2
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailableError, match="did not answer within 0.2 s in 2 attempts"):
        JudgeClient(server.url, "m", timeout=0.2, retries=1, backoff=0).score("t", "r", "x")
    assert time.perf_counter() - start < 1.5


def test_judge_replies_without_a_score_or_json(server):
    server.answers = [(200, {"message": {"content": "A fine answer."}}, 0), (200, b"<html>not json</html>", 0),
                      (200, {"unexpected": True}, 0)]
    client = JudgeClient(server.url, "m", backoff=0)
    with pytest.raises(JudgeResponseError, match="no score"):
        client.score("t", "r", "x")
    with pytest.raises(JudgeResponseError, match="not answer with JSON"):
        client.score("t", "r", "x")
    with pytest.raises(JudgeResponseError, match="lacks the text"):
        client.score("t", "r", "x")


# ----------------------------------------------------------------------------------
# Human ratings
# ----------------------------------------------------------------------------------

ENTRIES = [
    {"instruction": "Give the plural of 'mouse'.", "input": "", "output": "mice", "model_response": "mouses"},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat", "model_response": "chat"},
    {"instruction": "Is <b>this</b> bold?", "input": "", "output": "No & yes.", "model_response": "Yes"},
]


def test_rating_session_records_and_saves(tmp_path):
    session = RatingSession(ENTRIES, rater="tester")
    session.rate(2, note="wrong plural")
    assert session.position == 1 and session.ratings == {0: 2} and session.notes == {0: "wrong plural"}
    session.rate(5)
    session.rate(3, index=0)  # a changed mind replaces the old rating
    assert session.ratings == {0: 3, 1: 5} and session.notes == {} and not session.done
    session.go_to(2)
    session.rate(4)
    assert session.done and session.position == 2 and session.mean() == 4.0
    saved = json.loads(session.save(tmp_path / "ratings.json").read_text())
    assert saved["rater"] == "tester" and saved["scale"] == [1, 2, 3, 4, 5] and saved["num_entries"] == 3
    assert [r["rating"] for r in saved["ratings"]] == [3, 5, 4]
    assert saved["ratings"][1] == {"index": 1, "instruction": "Translate to French.", "input": "cat",
                                   "reference": "chat", "response": "chat", "rating": 5, "note": ""}


def test_rating_session_errors():
    session = RatingSession(ENTRIES)
    with pytest.raises(ValueError, match=r"not on the scale \[1, 2, 3, 4, 5\]"):
        session.rate(0)
    with pytest.raises(IndexError, match="3 entries"):
        session.rate(3, index=3)
    with pytest.raises(ValueError, match="no ratings"):
        session.mean()
    with pytest.raises(KeyError, match="model_response"):
        RatingSession([{"instruction": "x", "output": "y"}])
    with pytest.raises(ValueError, match="empty"):
        RatingSession([])


def test_comparison_table_html():
    table = comparison_table_html(ENTRIES, extra_columns={"rating": [2, None, 4]})
    assert table.count("<tr>") == 4 and "<th" in table and "rating" in table
    assert "&lt;b&gt;this&lt;/b&gt;" in table and "No &amp; yes." in table and "<b>this" not in table
    assert "Input: cat" in table and "–" in table
    assert "x" * 10 + " …" in comparison_table_html([dict(ENTRIES[0], model_response="x" * 50)], max_chars=10)
    with pytest.raises(ValueError, match="2 values for 3 entries"):
        comparison_table_html(ENTRIES, extra_columns={"rating": [1, 2]})


def test_rating_widget_buttons_record_into_the_session():
    pytest.importorskip("ipywidgets")
    session = RatingSession(ENTRIES)
    widget = rating_widget(session)
    view, controls, note = widget.children
    buttons = {b.description: b for b in controls.children[1:]}
    assert list(buttons) == ["1", "2", "3", "4", "5", "◀ back", "next ▶"]
    assert "Entry 1 of 3" in view.value and "mouses" in view.value
    note.value = "wrong plural"
    buttons["2"].click()
    assert session.ratings == {0: 2} and session.notes == {0: "wrong plural"}
    assert "Entry 2 of 3" in view.value and note.value == ""
    buttons["next ▶"].click()
    buttons["5"].click()
    assert session.ratings == {0: 2, 2: 5}
    buttons["◀ back"].click()
    buttons["◀ back"].click()
    assert "Entry 1 of 3" in view.value and "rated 2" in view.value and note.value == "wrong plural"
    assert buttons["2"].button_style == "primary" and buttons["3"].button_style == ""
