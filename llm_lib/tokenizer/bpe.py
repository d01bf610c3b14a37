"""Byte-level byte-pair encoding (chapter 8): the merge helpers and the machinery every BPE
tokenizer shares.

``ByteLevelBPE`` pre-splits the text with ``GPT2_SPLIT_PATTERN``, turns each
piece into bytes and applies the learned merges in the order they were learned;
``encode_iterable`` does the same for text that arrives in chunks. Learning the
merges is ``bpe_training``'s job.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Iterable, Iterator, Mapping

import regex

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "ByteLevelBPE",
    "bytes_to_unicode",
    "get_pair_counts",
    "merge_pair",
]

# GPT-2's pre-tokeniser: contractions, letters, digits, other symbols (each optionally
# led by one space) and whitespace runs. "\s+(?!\S)" leaves the last space of a run to
# the next word, so " world" stays one piece.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def get_pair_counts(ids: list[int],
                    counts: dict[tuple[int, int], int] | None = None,
                    weight: int = 1) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in ``ids`` (chapter 8), each
    occurrence adding ``weight``.

    Pass ``counts`` to add to an existing tally (pairs keep first-seen
    order). get_pair_counts([1, 2, 3, 1, 2]) -> {(1, 2): 2, (2, 3): 1,
    (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in itertools.pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: list[int], pair: tuple[int, int],
               new_id: int) -> list[int]:
    """``ids`` with each occurrence of ``pair``, scanning left to right,
    replaced by ``new_id`` (chapter 8).

    merge_pair([1, 2, 3, 1, 2], (1, 2), 9) -> [9, 3, 9]
    merge_pair([5, 5, 5], (5, 5), 7) -> [7, 5]
    """
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
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
    # A piece is final once the text runs this far past its start: beyond its greedy runs,
    # GPT-2's pattern looks ahead at most three characters (the contractions 're, 'll, 've).
    _LOOKAHEAD = 8

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

    def encode_iterable(self, chunks: Iterable[str], allowed_special: str | Iterable[str] = frozenset(),
                        block: int = 1 << 16) -> Iterator[int]:
        """Token ids of the text that ``chunks`` make together, yielded as they become final.

        For text larger than memory: pass an open file (its lines) or any
        iterable of strings. The ids are those of ``encode("".join(chunks),
        allowed_special, disallowed_special=())``; only the unfinished end of
        the text is held: its last pre-tokenised pieces (which the next chunk
        may extend or regroup) and anything that may be the start of a special
        token. Short chunks (a file's lines) are gathered into ``block``
        characters before they are encoded, which saves work per chunk.
        """
        allowed = sorted(self._special_set(allowed_special), key=len, reverse=True)
        special = re.compile("|".join(map(re.escape, allowed))) if allowed else None
        prefixes = {name[:k] for name in allowed for k in range(1, len(name))}
        longest = max(map(len, allowed), default=1)
        rest, pending = "", ""  # pending: a high surrogate whose partner may come next
        gathered, size = [], 0
        for chunk in itertools.chain(chunks, [None]):  # None: the text has ended
            final = chunk is None
            raw = pending + (chunk or "")
            pending = raw[-1:] if not final and raw and "\ud800" <= raw[-1] <= "\udbff" else ""
            gathered.append(raw[:len(raw) - len(pending)])
            size += len(gathered[-1])
            if not final and size < block:
                continue
            rest += _valid_unicode("".join(gathered))
            gathered, size = [], 0
            start = 0
            for match in special.finditer(rest) if special else ():
                yield from self.encode_ordinary(rest[start:match.start()])  # a special token ends a piece
                yield self.special_tokens[match.group()]
                start = match.end()
            rest = rest[start:]
            if final:
                yield from self.encode_ordinary(rest)
                return
            hold = next((k for k in range(min(longest - 1, len(rest)), 0, -1) if rest[-k:] in prefixes), 0)
            end = len(rest) - hold
            pieces = self.pretokenize(rest, end)
            done, keep = end, 0  # from the end: the pieces that more text could still change stay
            while keep < len(pieces) and (keep == 0 or done - len(pieces[-keep - 1]) + self._LOOKAHEAD > end):
                keep += 1
                done -= len(pieces[-keep])
            yield from itertools.chain.from_iterable(map(self._encode_piece, pieces[:len(pieces) - keep]))
            rest = rest[done:]

    def pretokenize(self, text: str, end: int | None = None) -> list[str]:
        """The pieces ``text[:end]`` is cut into before any merge: no merge crosses their borders."""
        return self._splitter.findall(text, 0, len(text) if end is None else end)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special-token handling at all: each piece merged on its own."""
        ids = []
        for piece in self.pretokenize(_valid_unicode(text)):
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
