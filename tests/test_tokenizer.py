"""Tokenizers: word-level ones on The Verdict, BPE trained from scratch, GPT-2's vs tiktoken."""

import itertools
import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_lib.data_sources import data_path, load_text
from llm_lib.tokenizer import (
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    UNKNOWN_TOKEN,
    BPETokenizer,
    GPT2Tokenizer,
    MergeStep,
    PairCounts,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    build_vocab,
    bytes_to_unicode,
    get_gpt2_encoding,
    get_pair_counts,
    merge_pair,
    reference_merges,
    split_text,
)

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Everything but lone surrogates, which no UTF-8 text can hold, and code points that are
# unassigned in Python's Unicode tables (category Cn): the `regex` module and tiktoken's Rust
# engine each carry their own Unicode version, and a letter added in a newer version (seen:
# U+323B0, a letter for regex 2026.11, not for tiktoken) splits differently in the two.
any_char = st.characters(exclude_categories=("Cs", "Cn"))
FRAGMENTS = [
    # contractions, in the cases GPT-2's pattern does and does not catch
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'VE", "'Re", "don't", "I'm",
    # whitespace runs, including trailing ones and Unicode spaces
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r", " \n", "  \n ",
    "\u00a0", "\u3000", "\x0b", "\x0c", "\x85", "\u2028", "\x1c",
    # words, digits, punctuation
    "Hello", " world", "the", " The", "123", " 4567", "3.14", "1,000", "\u0663", "...", "!?",
    "--", "(", ")", '"', "'", "#", "$", "_", "\\", "\x00",
    # emoji, CJK, other scripts, combining marks
    "😀", "👍🏽", "👨‍👩‍👧", "日本語", "中文", "한국어", "Ελληνικά", "café", "e\u0301", "\ufffd",
    # pieces that can join into <|endoftext|>
    "<|", "|>", "endoftext", ENDOFTEXT,
]
mixed_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(alphabet=any_char, max_size=12)),
    max_size=20,
).map("".join)

# One passage of The Verdict whose spacing SimpleTokenizerV1 reproduces exactly.
VERDICT_PASSAGE = (
    "It was not till three years later that, in the course of a few weeks' idling on the "
    "Riviera, it suddenly occurred to me to wonder why Gisburn had given up his painting."
)


@pytest.fixture(scope="module")
def verdict():
    return load_text("the-verdict.txt")


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    return get_gpt2_encoding()


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def bpe_1000(verdict):
    tok = BPETokenizer()
    tok.train(verdict, vocab_size=1000)
    return tok


# ----------------------------------------------------------------------------------
# Word-level tokenizers
# ----------------------------------------------------------------------------------


def test_split_text_keeps_punctuation_and_special_tokens():
    assert split_text("Hello, world--is this<|endoftext|>a test?") == [
        "Hello", ",", "world", "--", "is", "this", "<|endoftext|>", "a", "test", "?"]
    assert split_text('  "Yes!" (she said)\n') == ['"', "Yes", "!", '"', "(", "she", "said", ")"]


def test_build_vocab_sorts_tokens_and_puts_special_tokens_last():
    assert build_vocab(["the", "cat", "the"], ["<|unk|>"]) == {"cat": 0, "the": 1, "<|unk|>": 2}
    assert build_vocab(["b", ENDOFTEXT, "a"], [ENDOFTEXT]) == {"a": 0, "b": 1, ENDOFTEXT: 2}


def test_verdict_vocabulary(verdict):
    vocab = build_vocab(split_text(verdict), special_tokens=[ENDOFTEXT, UNKNOWN_TOKEN])
    assert len(vocab) == 1132
    assert vocab[ENDOFTEXT] == 1130 and vocab[UNKNOWN_TOKEN] == 1131
    assert list(vocab)[:3] == ["!", '"', "'"]


def test_v1_round_trips_a_passage_exactly(verdict):
    tok = SimpleTokenizerV1(build_vocab(split_text(verdict)))
    ids = tok.encode(VERDICT_PASSAGE)
    assert len(ids) == len(split_text(VERDICT_PASSAGE))
    assert tok.decode(ids) == VERDICT_PASSAGE


def test_v1_decoding_only_normalises_spacing(verdict):
    tok = SimpleTokenizerV1(build_vocab(split_text(verdict)))
    ids = tok.encode(verdict)
    assert tok.encode(tok.decode(ids)) == ids
    messy = "I  HAD always\nthought ,  Jack ."
    assert tok.decode(tok.encode(messy)) == "I HAD always thought, Jack."


def test_v1_unknown_word_is_a_clear_error(verdict):
    tok = SimpleTokenizerV1(build_vocab(split_text(verdict)))
    with pytest.raises(KeyError, match=r"'Hello' is not in the vocabulary.*SimpleTokenizerV2"):
        tok.encode("Hello, do you like tea?")
    with pytest.raises(ValueError, match="Hello"):  # the same error is a ValueError too
        tok.encode("Hello")


def test_v1_rejects_unknown_ids_and_duplicate_ids():
    tok = SimpleTokenizerV1({"a": 0, "b": 1})
    with pytest.raises(ValueError, match="2 tokens"):
        tok.decode([0, 7])
    with pytest.raises(ValueError, match="same id"):
        SimpleTokenizerV1({"a": 0, "b": 0})


def test_v2_maps_unknown_words_and_keeps_endoftext(verdict):
    tok = SimpleTokenizerV2(build_vocab(split_text(verdict), [ENDOFTEXT, UNKNOWN_TOKEN]))
    texts = ["Hello, do you like tea?", "In the sunlit terraces of the palace."]
    text = " <|endoftext|> ".join(texts)
    ids = tok.encode(text)
    assert ids.count(tok.str_to_int[ENDOFTEXT]) == 1
    assert ids.count(tok.unk_id) == 2
    assert tok.decode(ids) == (
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>.")
    assert tok.encode("tea?<|endoftext|>In") == tok.encode("tea? <|endoftext|> In")


def test_v2_needs_its_special_tokens(verdict):
    with pytest.raises(ValueError, match=re.escape(UNKNOWN_TOKEN)):
        SimpleTokenizerV2(build_vocab(split_text(verdict), [ENDOFTEXT]))


# ----------------------------------------------------------------------------------
# BPE building blocks
# ----------------------------------------------------------------------------------


def test_pair_counts_and_merges():
    assert get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_pair_counts([1, 2], {(1, 2): 1}, weight=5) == {(1, 2): 6}
    assert get_pair_counts([7]) == {}
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([5, 5, 5], (5, 5), 7) == [7, 5]


def test_bytes_to_unicode_gives_every_byte_a_printable_character():
    table = bytes_to_unicode()
    assert list(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


# ----------------------------------------------------------------------------------
# BPETokenizer
# ----------------------------------------------------------------------------------


def test_bpe_vocab_size_is_exact(bpe_1000):
    assert len(bpe_1000.vocab) == bpe_1000.vocab_size == 1000
    assert len(bpe_1000.merges) == len(bpe_1000.history) == 744
    assert [step.new_id for step in bpe_1000.history] == list(range(256, 1000))
    assert all(isinstance(step, MergeStep) for step in bpe_1000.history)


def test_bpe_with_no_merges_is_plain_utf8():
    tok = BPETokenizer()
    tok.train("héllo wörld", vocab_size=256)
    assert tok.encode("héllo wörld") == list("héllo wörld".encode())


def test_bpe_rejects_vocab_below_256():
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer().train("some text", vocab_size=255)


def test_bpe_says_how_many_merges_the_text_allows():
    tok = BPETokenizer()
    # "aaaa" -> (a, a) twice -> one token: only two merges exist
    with pytest.raises(ValueError, match="only allows 2 merges"):
        tok.train("aaaa", vocab_size=300)
    assert tok.merges == {} and len(tok.vocab) == 256


def test_bpe_history_for_a_notebook(bpe_1000, verdict):
    first = bpe_1000.history[0]
    assert first == MergeStep((ord(" "), ord("t")), 256, verdict.count(" t"))
    # merging can only lower the counts of the pairs still waiting
    counts = [step.count for step in bpe_1000.history]
    assert counts == sorted(counts, reverse=True)

    tok = BPETokenizer()
    steps = list(itertools.islice(tok.train_steps(verdict, 100), 5))
    assert steps == tok.history == bpe_1000.history[:5]
    assert len(tok.vocab) == 261 and tok.vocab[first.new_id] == b" t"


def test_bpe_breaks_ties_by_first_seen_pair():
    tok = BPETokenizer()
    tok.train("ab cd", vocab_size=257)  # (a, b), ( , c), (c, d) all occur once
    assert tok.history == [MergeStep((ord("a"), ord("b")), 256, 1)]


def test_bpe_training_is_deterministic(bpe_1000, verdict):
    again = BPETokenizer()
    again.train(verdict, vocab_size=1000)
    assert again.history == bpe_1000.history
    assert again.vocab == bpe_1000.vocab


def test_bpe_merges_stay_inside_pre_split_pieces(bpe_1000):
    # a space always starts a piece, so no token may run from a word into the next space
    assert b" the" in bpe_1000.vocab.values()
    assert not [t for t in bpe_1000.vocab.values() if re.search(rb"[A-Za-z][ \n]", t)]


def test_bpe_compresses_the_verdict(bpe_1000, verdict):
    n_bytes = len(verdict.encode("utf-8"))
    n_tokens = len(bpe_1000.encode(verdict))
    assert n_bytes / n_tokens > 2.7  # measured 2.93 with 744 merges


@PROPERTY
@given(text=st.one_of(st.text(alphabet=any_char), mixed_text))
def test_bpe_round_trips_any_unicode(bpe_1000, text):
    ids = bpe_1000.encode(text, disallowed_special=())
    assert bpe_1000.decode(ids) == text
    assert bpe_1000.decode_bytes(ids) == text.encode("utf-8")


def test_bpe_save_and_load_round_trip(bpe_1000, verdict, tmp_path):
    path = tmp_path / "bpe.json"
    bpe_1000.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["merges"][0][:4] == [32, 116, 256, 462]
    assert len(path.read_text(encoding="utf-8").splitlines()) > 744  # one merge a line
    loaded = BPETokenizer.load(path)
    assert loaded.history == bpe_1000.history
    assert loaded.merges == bpe_1000.merges and loaded.vocab == bpe_1000.vocab
    assert loaded.pattern == bpe_1000.pattern == GPT2_SPLIT_PATTERN
    sample = verdict + " naïve café 😀 日本語"
    assert loaded.encode(sample) == bpe_1000.encode(sample)


def test_bpe_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"merges": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="BPETokenizer.save"):
        BPETokenizer.load(path)


def test_bpe_special_tokens(bpe_1000, tmp_path):
    tok = BPETokenizer.load(_saved(bpe_1000, tmp_path))
    tok.register_special_tokens({ENDOFTEXT: 1000})
    assert tok.vocab_size == 1001
    text = "the end<|endoftext|>the start"
    ids = tok.encode(text, allowed_special={ENDOFTEXT})
    assert ids.count(1000) == 1 and tok.decode(ids) == text
    with pytest.raises(ValueError, match="not allowed"):
        tok.encode(text)
    assert 1000 not in tok.encode(text, disallowed_special=())
    with pytest.raises(ValueError, match="in use"):
        tok.register_special_tokens({"<|pad|>": 999})
    assert BPETokenizer.load(_saved(tok, tmp_path)).special_tokens == {ENDOFTEXT: 1000}


def _saved(tok, tmp_path):
    path = tmp_path / "saved.json"
    tok.save(path)
    return path


# ----------------------------------------------------------------------------------
# GPT2Tokenizer against tiktoken
# ----------------------------------------------------------------------------------


def _same_as_tiktoken(ours, theirs, text, **kwargs):
    """Both tokenizers give the same ids for ``text``, or both raise ValueError."""
    try:
        expected = theirs.encode(text, **kwargs)
    except ValueError:
        with pytest.raises(ValueError, match="special token"):
            ours.encode(text, **kwargs)
        return None
    assert ours.encode(text, **kwargs) == expected
    return expected


def test_gpt2_sizes(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.vocab) == 50256
    assert gpt2.eot_token == gpt2.eot_id == 50256
    assert len(gpt2.merges) == 50000


@pytest.mark.parametrize("name", ["the-verdict.txt", "instruction-data.json"])
def test_gpt2_matches_tiktoken_on_whole_files(gpt2, tiktoken_gpt2, name):
    text = load_text(name)
    ids = _same_as_tiktoken(gpt2, tiktoken_gpt2, text)
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("text", [
    "", " ", "   ", "\n", "\n\n\n", "trailing spaces   ", "trailing newline\n", "a\n\n\nb",
    "x \n y", "  leading", "\t\tindented", "line\r\nbreak\r\n", "tab\t", "a  b   c",
    "I'll they'VE we'Re it's DON'T", "'''", "1234567 3.14 ٣٤", "😀👍🏽👨‍👩‍👧", "日本語のテキスト",
    "naïve café", "\x00\x1c\x85\u2028\u00a0\u3000", "a\ud800b", "\ud83d\ude00",
])
def test_gpt2_matches_tiktoken_on_edge_cases(gpt2, tiktoken_gpt2, text):
    ids = _same_as_tiktoken(gpt2, tiktoken_gpt2, text)
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


@PROPERTY
@given(text=mixed_text)
def test_gpt2_matches_tiktoken_on_random_text(gpt2, tiktoken_gpt2, text):
    for kwargs in ({}, {"allowed_special": "all"}, {"disallowed_special": ()}):
        _same_as_tiktoken(gpt2, tiktoken_gpt2, text, **kwargs)
    ids = gpt2.encode(text, disallowed_special=())
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids) == text


@PROPERTY
@given(ids=st.lists(st.integers(0, 50256), max_size=20))
def test_gpt2_decodes_any_ids_like_tiktoken(gpt2, tiktoken_gpt2, ids):
    # random ids often cut characters in half: both must fall back to U+FFFD alike
    assert gpt2.decode_bytes(ids) == tiktoken_gpt2.decode_bytes(ids)
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


def test_gpt2_special_token_handling(gpt2, tiktoken_gpt2):
    text = "<|endoftext|>Hello<|endoftext|><|endoftext|> world <|endoftext|>"
    for allowed in ({ENDOFTEXT}, "all"):
        ids = _same_as_tiktoken(gpt2, tiktoken_gpt2, text, allowed_special=allowed)
        assert ids.count(50256) == 4 and gpt2.decode(ids) == text
    with pytest.raises(ValueError):
        tiktoken_gpt2.encode(text)
    with pytest.raises(ValueError, match="allowed_special"):
        gpt2.encode(text)
    ids = _same_as_tiktoken(gpt2, tiktoken_gpt2, text, disallowed_special=())
    assert 50256 not in ids


def test_gpt2_decode_replaces_broken_utf8(gpt2, tiktoken_gpt2):
    ids = gpt2.encode("😀")
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == tiktoken_gpt2.decode(ids[:1]) == "\ufffd"


def test_gpt2_decode_rejects_ids_outside_the_vocabulary(gpt2):
    for bad in (50257, -1, 10**9):
        with pytest.raises(ValueError, match="50257"):
            gpt2.decode([1, bad])
    with pytest.raises(TypeError, match="integers"):
        gpt2.decode([1.5])
    assert gpt2.decode(torch.tensor([15496, 11, 995])) == "Hello, world"


def test_gpt2_shows_subword_pieces(gpt2, tiktoken_gpt2, verdict):
    ids = gpt2.encode("Hello, world. Akwirw ier")
    assert gpt2.token_strings(ids) == ["Hello", ",", " world", ".", " Ak", "w", "ir", "w", " ",
                                       "ier"]
    assert gpt2.token_symbols(ids)[:3] == ["Hello", ",", "Ġworld"]
    ids = gpt2.encode(verdict)
    assert gpt2.decode_tokens_bytes(ids) == tiktoken_gpt2.decode_tokens_bytes(ids)


def test_gpt2_from_files(gpt2):
    tok = GPT2Tokenizer.from_files(data_path("gpt2/encoder.json"), data_path("gpt2/vocab.bpe"))
    assert tok.merges == gpt2.merges and tok.vocab == gpt2.vocab


def test_gpt2_rejects_mismatched_files(tmp_path):
    bad_merges = tmp_path / "vocab.bpe"
    bad_merges.write_text("#version: 0.2\nĠ t\nqq zz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a matching GPT-2"):
        GPT2Tokenizer.from_files(data_path("gpt2/encoder.json"), bad_merges)


# ---------------------------------------------------------------- the incremental trainer


def _pieces(text):
    from llm_lib.tokenizer.bpe_training import BPETokenizer as Trainer

    return Trainer()._training_pieces(text, ())


@pytest.mark.parametrize("source, num_merges", [("the-verdict.txt", 744), ("tinyshakespeare.txt", 300)])
def test_incremental_counts_learn_the_reference_loops_merges(source, num_merges):
    text = load_text(source)[:60_000]
    learned = [step.pair for step in BPETokenizer().train_steps(text, num_merges)]
    assert learned == reference_merges(*_pieces(text), num_merges)


@settings(max_examples=150, deadline=None)
@given(text=mixed_text, num_merges=st.integers(0, 40))
def test_incremental_counts_break_ties_like_the_reference(text, num_merges):
    # short random texts are full of equally frequent pairs: the first one met must win
    reference = reference_merges(*_pieces(text), num_merges)
    tok = BPETokenizer()
    learned = [step.pair for step in itertools.islice(tok.train_steps(text, num_merges, ()), len(reference))]
    assert learned == reference
    counts = PairCounts(*_pieces(text))
    for k, pair in enumerate(reference):  # the counts stay those of a full recount
        counts.merge(pair, 256 + k)
    recount = {}
    for word, weight in zip(counts.words, counts.weights, strict=True):
        get_pair_counts(word, recount, weight)
    assert counts.counts == recount


def test_special_tokens_never_enter_a_merge():
    stories = f"Once upon a time there was a cat.{ENDOFTEXT}The dog ran home.{ENDOFTEXT}" * 40
    tok = BPETokenizer()
    tok.train(stories, vocab_size=280)
    learned = {tok.vocab[step.new_id] for step in tok.history}
    assert not {b for b in learned if b"<|" in b or b"|>" in b or b"endoftext" in b}
    mixed = BPETokenizer()  # the control: the same text with <|endoftext|> left in
    mixed.train(stories, vocab_size=280, special_tokens=())
    assert any(b"endoftext" in mixed.vocab[step.new_id] for step in mixed.history)
    tok.register_special_tokens({ENDOFTEXT: 280})
    assert tok.encode(ENDOFTEXT, allowed_special="all") == [280]


# ---------------------------------------------------------------- streaming


@PROPERTY
@given(text=mixed_text, cuts=st.lists(st.integers(0, 200), max_size=8), allow=st.booleans())
def test_streaming_gives_the_ids_of_the_whole_text(bpe_1000, gpt2, text, cuts, allow):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    cuttings = [[text[a:b] for a, b in itertools.pairwise(bounds)]]
    cuttings += [[text[i:i + size] for i in range(0, len(text), size)] for size in (1, 2, 3, 5)]
    for tok in (bpe_1000, gpt2):
        special = "all" if allow else frozenset()
        whole = tok.encode(text, allowed_special=special, disallowed_special=())
        for chunks in cuttings:
            assert list(tok.encode_iterable(chunks, allowed_special=special, block=1)) == whole
        assert list(tok.encode_iterable(cuttings[1], allowed_special=special)) == whole  # gathered


def test_streaming_joins_a_surrogate_pair_cut_between_chunks(gpt2):
    assert list(gpt2.encode_iterable(["a \ud83d", "\ude00 b"], block=1)) == gpt2.encode("a \ud83d\ude00 b")
    assert list(gpt2.encode_iterable(["x\ud800", ""], block=1)) == gpt2.encode("x\ud800")  # a lone one: U+FFFD


def test_streaming_a_file_holds_only_its_unfinished_end(gpt2, tiktoken_gpt2, tmp_path):
    import tracemalloc

    text = load_text("tinyshakespeare.txt")
    path = tmp_path / "big.txt"
    path.write_text(text * 2, encoding="utf-8")
    tracemalloc.start()
    with open(path, encoding="utf-8") as f:
        count = sum(1 for _ in gpt2.encode_iterable(f))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == len(tiktoken_gpt2.encode_ordinary(text * 2))
    assert peak < 5_000_000  # the file is 2.2 MB; encoding it whole holds several times that
