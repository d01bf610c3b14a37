"""Tokenizers, from a word list to GPT-2's byte-level BPE (chapters 7 and 8).

The book builds them in this order:

* ``SimpleTokenizerV1``: words and punctuation looked up in a fixed vocabulary.
* ``SimpleTokenizerV2``: the same, with ``<|unk|>`` for unknown words and
  ``<|endoftext|>`` between documents.
* ``BPETokenizer``: byte-level byte-pair encoding trained from scratch, with every
  merge recorded in ``history`` so a notebook can replay it.
* ``GPT2Tokenizer``: our own reading of OpenAI's ``encoder.json`` and ``vocab.bpe``;
  it gives exactly the ids of ``tiktoken.get_encoding("gpt2")``.
* ``get_gpt2_encoding()``: tiktoken's fast implementation, used by the rest of the
  book. Offline, point ``TIKTOKEN_CACHE_DIR`` at a folder holding its two files.

Both BPE tokenizers share ``ByteLevelBPE``: pre-split the text with
``GPT2_SPLIT_PATTERN``, turn each piece into bytes, apply the learned merges in the
order they were learned.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import regex

__all__ = [
    "ENDOFTEXT",
    "GPT2_SPLIT_PATTERN",
    "UNKNOWN_TOKEN",
    "BPETokenizer",
    "ByteLevelBPE",
    "GPT2Tokenizer",
    "MergeStep",
    "SimpleTokenizerV1",
    "SimpleTokenizerV2",
    "UnknownTokenError",
    "build_vocab",
    "bytes_to_unicode",
    "get_gpt2_encoding",
    "get_pair_counts",
    "merge_pair",
    "split_text",
]

ENDOFTEXT = "<|endoftext|>"
UNKNOWN_TOKEN = "<|unk|>"

# GPT-2's pre-tokeniser: contractions, letters, digits, other symbols (each optionally
# led by one space) and whitespace runs. "\s+(?!\S)" leaves the last space of a run to
# the next word, so " world" stays one piece.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# ----------------------------------------------------------------------------------
# Word-level tokenizers
# ----------------------------------------------------------------------------------

# A special token such as <|endoftext|> comes first so punctuation rules never cut it up.
_SIMPLE_SPLIT = re.compile(r"""(<\|[^|\s]+\|>|[,.:;?_!"()']|--|\s)""")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"""\s+([,.:;?_!"()'])""")


class UnknownTokenError(KeyError, ValueError):
    """A word that is not in a word-level tokenizer's vocabulary."""

    def __str__(self) -> str:
        # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


def split_text(text: str) -> list[str]:
    """Words, punctuation marks and special tokens of ``text``, with whitespace dropped.

    split_text('Hello, world--is this<|endoftext|>a test?')
    -> ['Hello', ',', 'world', '--', 'is', 'this', '<|endoftext|>', 'a', 'test', '?']
    """
    return [piece for piece in _SIMPLE_SPLIT.split(text) if piece.strip()]


def build_vocab(tokens: Iterable[str], special_tokens: Iterable[str] = ()) -> dict[str, int]:
    """Ids for the distinct ``tokens`` in sorted order, then for ``special_tokens`` at the end.

    build_vocab(['the', 'cat', 'the'], ['<|unk|>']) -> {'cat': 0, 'the': 1, '<|unk|>': 2}
    """
    specials = list(dict.fromkeys(special_tokens))
    words = sorted(set(tokens) - set(specials))
    return {token: i for i, token in enumerate(words + specials)}


class SimpleTokenizerV1:
    """Word-level tokenizer over a fixed vocabulary; a word outside it is an error."""

    def __init__(self, vocab: Mapping[str, int]):
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in self.str_to_int.items()}
        if len(self.int_to_str) != len(self.str_to_int):
            raise ValueError("vocab gives the same id to two tokens; ids must be unique")

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.str_to_int)

    def encode(self, text: str) -> list[int]:
        """Ids of the words and punctuation marks of ``text``."""
        return [self._token_id(token) for token in split_text(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: tokens joined by single spaces, with no space before punctuation.

        Whitespace is not stored, so this is ``text`` only up to spacing:
        ``decode(encode("Hi,  you"))`` gives ``"Hi, you"``.
        """
        tokens = []
        for i in ids:
            if i not in self.int_to_str:
                raise ValueError(
                    f"token id {i!r} is not in this vocabulary of {self.vocab_size} tokens"
                )
            tokens.append(self.int_to_str[i])
        return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(tokens))

    def _token_id(self, token: str) -> int:
        try:
            return self.str_to_int[token]
        except KeyError:
            raise UnknownTokenError(
                f"{token!r} is not in the vocabulary ({self.vocab_size} tokens); add it to the "
                f"vocabulary, or use SimpleTokenizerV2, which maps unknown words to {UNKNOWN_TOKEN}"
            ) from None


class SimpleTokenizerV2(SimpleTokenizerV1):
    """Word-level tokenizer: unknown words become ``<|unk|>``, ``<|endoftext|>`` stays whole."""

    def __init__(self, vocab: Mapping[str, int]):
        missing = [token for token in (UNKNOWN_TOKEN, ENDOFTEXT) if token not in vocab]
        if missing:
            raise ValueError(
                f"SimpleTokenizerV2 needs {missing} in its vocabulary; build it with "
                f"build_vocab(tokens, special_tokens=[{ENDOFTEXT!r}, {UNKNOWN_TOKEN!r}])"
            )
        super().__init__(vocab)
        self.unk_id = self.str_to_int[UNKNOWN_TOKEN]

    def _token_id(self, token: str) -> int:
        return self.str_to_int.get(token, self.unk_id)


# ----------------------------------------------------------------------------------
# Byte-pair encoding: helpers and the shared machinery
# ----------------------------------------------------------------------------------


def get_pair_counts(
    ids: list[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1
) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in ``ids``, each occurrence adding ``weight``.

    Pass ``counts`` to add to an existing tally (pairs keep first-seen order).

    get_pair_counts([1, 2, 3, 1, 2]) -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in itertools.pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with each occurrence of ``pair``, scanning left to right, replaced by ``new_id``.

    merge_pair([1, 2, 3, 1, 2], (1, 2), 9) -> [9, 3, 9]
    merge_pair([5, 5, 5], (5, 5), 7) -> [7, 5]
    """
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte value 0-255.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...)
    get code points 256, 257, ... in byte order, so BPE files never hold whitespace.

    bytes_to_unicode()[ord('A')] -> 'A';  bytes_to_unicode()[ord(' ')] -> 'Ġ'
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_code_point)
            next_code_point += 1
    return dict(sorted(table.items()))


def _valid_unicode(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, as tiktoken does before encoding.

    _valid_unicode('a\\ud800b') -> 'a\\ufffdb'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class ByteLevelBPE:
    """Shared encode/decode of byte-level BPE: pre-split, map bytes to ids, apply merges.

    ``vocab`` maps each ordinary id to its bytes, ``merges`` maps an id pair to the id
    it becomes. Ids are handed out in merge order, so the smallest new id is the
    earliest merge. ``special_tokens`` maps strings like ``<|endoftext|>`` to ids.
    """

    _CACHE_LIMIT = 100_000  # pieces; beyond it the cache starts over so memory stays bounded

    def __init__(self, pattern: str = GPT2_SPLIT_PATTERN):
        self.pattern = pattern
        self._splitter = regex.compile(pattern)
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.merges: dict[tuple[int, int], int] = {}
        self.special_tokens: dict[str, int] = {}
        self._byte_ids = list(range(256))  # id of each single byte value
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: ordinary tokens plus special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    def register_special_tokens(self, special_tokens: Mapping[str, int]) -> None:
        """Add special tokens such as ``{"<|endoftext|>": 1000}``; their ids must be unused."""
        taken = set(self.vocab) | set(self.special_tokens.values())
        for name, token_id in special_tokens.items():
            if not name:
                raise ValueError("a special token cannot be the empty string")
            if token_id in taken:
                raise ValueError(f"special token {name!r} asks for id {token_id}, which is in use")
            taken.add(token_id)
        self.special_tokens.update(special_tokens)

    # --- encoding -----------------------------------------------------------------

    def encode(self, text: str, allowed_special: str | Iterable[str] = frozenset(),
               disallowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of ``text``, treating special tokens the way tiktoken does.

        Special tokens named in ``allowed_special`` (or ``"all"``) become their ids. Any
        other special token found in the text raises ValueError, unless it is left out
        of ``disallowed_special`` (``()`` encodes them all as plain text).
        """
        allowed = self._special_set(allowed_special)
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = self._special_set(disallowed_special)
        for name in sorted(disallowed):
            if name in text:
                raise ValueError(
                    f"the text contains the special token {name!r}, which is not allowed; pass "
                    f"allowed_special={{{name!r}}} to encode it as id {self.special_tokens[name]}, "
                    f"or disallowed_special=() to encode it as ordinary text"
                )
        if not allowed:
            return self.encode_ordinary(text)
        # longest first, so a special token that starts another one cannot cut it short
        names = sorted(allowed, key=len, reverse=True)
        pieces = re.split("(" + "|".join(map(re.escape, names)) + ")", text)
        ids = []
        for k, piece in enumerate(pieces):
            # re.split puts the captured special tokens at the odd positions
            ids.extend([self.special_tokens[piece]] if k % 2 else self.encode_ordinary(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special-token handling at all."""
        ids = []
        for piece in self._splitter.findall(_valid_unicode(text)):
            ids.extend(self._encode_piece(piece))
        return ids

    def _special_set(self, names: str | Iterable[str]) -> set[str]:
        if names == "all":
            return set(self.special_tokens)
        if isinstance(names, str):
            raise TypeError(f"expected 'all' or a set of special tokens, got the string {names!r}")
        # like tiktoken, names this tokenizer does not have are ignored
        return set(names) & set(self.special_tokens)

    def _encode_piece(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            ids = self._apply_merges([self._byte_ids[b] for b in piece.encode("utf-8")])
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def _apply_merges(self, ids: list[int]) -> list[int]:
        while len(ids) >= 2:
            # replay training: the earliest-learned merge among the neighbours goes first
            pair = min(itertools.pairwise(ids), key=lambda p: self.merges.get(p, math.inf))
            if pair not in self.merges:
                break
            ids = merge_pair(ids, pair, self.merges[pair])
        return ids

    # --- decoding -----------------------------------------------------------------

    def decode_tokens_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of each token separately, e.g. to show how a word was split."""
        special_bytes = {i: name.encode("utf-8") for name, i in self.special_tokens.items()}
        pieces = []
        for i in ids:
            try:
                token_id = operator.index(i)  # also accepts numpy and 0-d torch integers
            except TypeError:
                raise TypeError(f"token ids must be integers, got {i!r}") from None
            piece = self.vocab.get(token_id, special_bytes.get(token_id))
            if piece is None:
                raise ValueError(
                    f"token id {token_id} is not in this tokenizer's vocabulary "
                    f"(vocab_size {self.vocab_size})"
                )
            pieces.append(piece)
        return pieces

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that ``ids`` stand for."""
        return b"".join(self.decode_tokens_bytes(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each token as text, e.g. ``['Hello', ',', ' world']``; part-characters show as U+FFFD."""
        return [piece.decode("utf-8", errors="replace") for piece in self.decode_tokens_bytes(ids)]


# ----------------------------------------------------------------------------------
# BPE trained from scratch
# ----------------------------------------------------------------------------------


class MergeStep(NamedTuple):
    """One learned merge: the pair of ids joined, the new id, and how often the pair occurred."""

    pair: tuple[int, int]
    new_id: int
    count: int


class BPETokenizer(ByteLevelBPE):
    """Byte-level BPE tokenizer trained from scratch; ids 0-255 are the single bytes."""

    FILE_FORMAT = "llm_lib.BPETokenizer"
    FILE_VERSION = 1

    def __init__(self, pattern: str = GPT2_SPLIT_PATTERN):
        super().__init__(pattern)
        self.history: list[MergeStep] = []

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> list[MergeStep]:
        """Learn ``vocab_size - 256`` merges from ``text``; returns ``history``.

        Earlier training is discarded. If ``text`` runs out of pairs first, raises
        ValueError and leaves the tokenizer with bytes only.
        """
        if vocab_size < 256:
            raise ValueError(
                f"vocab_size must be at least 256 (one id per byte value), got {vocab_size}"
            )
        num_merges = vocab_size - 256
        try:
            for step in self.train_steps(text, num_merges):
                if verbose:
                    print(f"merge {step.new_id - 255}/{num_merges}: {step.pair} -> {step.new_id} "
                          f"{self.vocab[step.new_id]!r} ({step.count} occurrences)")
        except ValueError:
            self._reset()
            raise
        return self.history

    def train_steps(self, text: str, num_merges: int) -> Iterator[MergeStep]:
        """Learn merges one by one, yielding each as soon as ``vocab`` and ``merges`` hold it.

        Stop iterating early to keep the merges so far. The most frequent pair wins;
        among equally frequent pairs, the one met first in the text does.
        """
        if num_merges < 0:
            raise ValueError(f"num_merges must be >= 0, got {num_merges}")
        self._reset()
        # Counting each distinct piece once, with its frequency as a weight, makes every
        # step cost the size of the vocabulary of pieces, not of the whole text.
        piece_counts = Counter(self._splitter.findall(_valid_unicode(text)))
        words = [list(piece.encode("utf-8")) for piece in piece_counts]
        weights = list(piece_counts.values())
        for k in range(num_merges):
            pair_counts: dict[tuple[int, int], int] = {}
            for word, weight in zip(words, weights, strict=True):
                get_pair_counts(word, pair_counts, weight)
            if not pair_counts:
                raise ValueError(
                    f"the text only allows {k} merges (vocab_size up to {256 + k}), "
                    f"not {num_merges}: every piece of it is already a single token"
                )
            best = max(pair_counts, key=pair_counts.__getitem__)  # first-seen pair wins ties
            new_id = 256 + k
            words = [merge_pair(word, best, new_id) if len(word) > 1 else word for word in words]
            yield self._add_merge(best, new_id, pair_counts[best])

    def _reset(self) -> None:
        self.vocab = {i: bytes([i]) for i in range(256)}
        self.merges = {}
        self.history = []
        self._cache.clear()

    def _add_merge(self, pair: tuple[int, int], new_id: int, count: int) -> MergeStep:
        self.merges[pair] = new_id
        self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
        step = MergeStep(pair, new_id, count)
        self.history.append(step)
        self._cache.clear()
        return step

    # --- files ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, one merge ``[left, right, new_id, count, text]`` a line."""
        header = {
            "format": self.FILE_FORMAT,
            "version": self.FILE_VERSION,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merge_columns": ["left", "right", "new_id", "count", "text (for reading only)"],
        }
        fields = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
                  for key, value in header.items()]
        rows = [
            "    " + json.dumps([*step.pair, step.new_id, step.count,
                                 self.vocab[step.new_id].decode("utf-8", errors="replace")],
                                ensure_ascii=False)
            for step in self.history
        ]
        # hand-written layout so the file reads one merge per line, yet stays plain JSON
        merges = '  "merges": [\n' + ",\n".join(rows) + "\n  ]"
        Path(path).write_text("{\n" + ",\n".join([*fields, merges]) + "\n}\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """A tokenizer read back from a file written by ``save``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != cls.FILE_FORMAT:
            raise ValueError(f"{path} is not a file written by BPETokenizer.save")
        if data.get("version") != cls.FILE_VERSION:
            raise ValueError(f"{path} has file version {data.get('version')!r}; "
                             f"this code reads version {cls.FILE_VERSION}")
        tokenizer = cls(data["pattern"])
        for k, row in enumerate(data["merges"]):
            left, right, new_id, count = row[:4]
            if new_id != 256 + k or not (0 <= left < new_id and 0 <= right < new_id):
                raise ValueError(f"{path}: merge number {k} {row} must make id {256 + k} "
                                 f"from two smaller ids")
            tokenizer._add_merge((left, right), new_id, count)
        tokenizer.register_special_tokens(data["special_tokens"])
        return tokenizer


# ----------------------------------------------------------------------------------
# GPT-2's tokenizer, read from OpenAI's files
# ----------------------------------------------------------------------------------


class GPT2Tokenizer(ByteLevelBPE):
    """GPT-2's byte-level BPE read from ``encoder.json`` and ``vocab.bpe``; gives tiktoken's ids."""

    def __init__(self, encoder_json_path: str | os.PathLike | None = None,
                 vocab_bpe_path: str | os.PathLike | None = None):
        super().__init__(GPT2_SPLIT_PATTERN)
        if encoder_json_path is None or vocab_bpe_path is None:
            from .data_sources import data_path

            encoder_json_path = encoder_json_path or data_path("gpt2/encoder.json")
            vocab_bpe_path = vocab_bpe_path or data_path("gpt2/vocab.bpe")
        with open(encoder_json_path, encoding="utf-8") as f:
            encoder: dict[str, int] = json.load(f)
        merge_lines = Path(vocab_bpe_path).read_text(encoding="utf-8").splitlines()
        self._char_of_byte = bytes_to_unicode()
        try:
            self._load_tables(encoder, merge_lines)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{encoder_json_path} and {vocab_bpe_path} are not a matching GPT-2 "
                             f"encoder.json / vocab.bpe pair: {exc}") from None

    def _load_tables(self, encoder: dict[str, int], merge_lines: list[str]) -> None:
        byte_of_char = {char: byte for byte, char in self._char_of_byte.items()}
        eot_id = encoder.pop(ENDOFTEXT)
        # encoder.json spells every token in stand-in characters; map them back to bytes
        self.vocab = {i: bytes(byte_of_char[c] for c in symbol) for symbol, i in encoder.items()}
        self._byte_ids = [encoder[self._char_of_byte[byte]] for byte in range(256)]
        self.merges = {}
        previous_id = 255
        for line_no, line in enumerate(merge_lines, start=1):
            if not line or (line_no == 1 and line.startswith("#version")):
                continue
            left, right = line.split(" ")
            new_id = encoder[left + right]
            # encoding uses the new id as the merge's rank, so the file must agree with that
            if new_id <= previous_id:
                raise ValueError(f"vocab.bpe line {line_no}: token ids must grow with merge "
                                 f"rank, but {left + right!r} has id {new_id}")
            self.merges[(encoder[left], encoder[right])] = previous_id = new_id
        self.register_special_tokens({ENDOFTEXT: eot_id})

    @classmethod
    def from_files(cls, encoder_json_path: str | os.PathLike,
                   vocab_bpe_path: str | os.PathLike) -> GPT2Tokenizer:
        """A GPT-2 tokenizer read from the given ``encoder.json`` and ``vocab.bpe``."""
        return cls(encoder_json_path, vocab_bpe_path)

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>`` (50256), as tiktoken names it."""
        return self.special_tokens[ENDOFTEXT]

    @property
    def eot_id(self) -> int:
        """Id of ``<|endoftext|>`` (50256)."""
        return self.eot_token

    def token_symbols(self, ids: Iterable[int]) -> list[str]:
        """Tokens as spelled in ``encoder.json``, e.g. ``['Hello', ',', 'Ġworld']`` (Ġ: space)."""
        specials = {i: name for name, i in self.special_tokens.items()}
        ids = list(ids)
        return [specials.get(i) or "".join(self._char_of_byte[b] for b in piece)
                for i, piece in zip(ids, self.decode_tokens_bytes(ids), strict=True)]


@functools.lru_cache(maxsize=1)
def get_gpt2_encoding():
    """tiktoken's GPT-2 encoding (``tiktoken.get_encoding("gpt2")``), loaded once."""
    import tiktoken

    return tiktoken.get_encoding("gpt2")
