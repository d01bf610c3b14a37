"""BPE trained from scratch (chapter 8): the merges learned from a text, one by one.

``BPETokenizer.train`` counts every adjacent pair once, then keeps the counts
up to date as pairs merge (``PairCounts``): a merge touches only the pieces
that hold the merged pair. ``reference_merges`` is the textbook loop that
recounts everything after each merge; it gives the same merges, far slower,
and is kept as the reference. Every merge is recorded in ``history`` so that a
notebook can replay it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from .bpe import GPT2_SPLIT_PATTERN, ByteLevelBPE, _valid_unicode, get_pair_counts, merge_pair
from .simple import ENDOFTEXT

__all__ = [
    "MergeStep",
    "PairCounts",
    "reference_merges",
    "BPETokenizer",
]


class MergeStep(NamedTuple):
    """One learned merge: the pair of ids joined, the new id, and how often the pair occurred."""

    pair: tuple[int, int]
    new_id: int
    count: int


class PairCounts:
    """Weighted counts of adjacent pairs over a list of words, kept up to date as pairs merge.

    ``where[pair]`` is the set of words holding ``pair``, so a merge touches only
    those words: it subtracts their old pairs and adds their new ones. Counts
    sit in buckets by value, so the most frequent pair is found without a scan.
    """

    def __init__(self, words: list[list[int]], weights: list[int]):
        self.words, self.weights = [list(w) for w in words], list(weights)
        self.counts: dict[tuple[int, int], int] = {}
        self.where: dict[tuple[int, int], set[int]] = {}
        self.buckets: dict[int, set[tuple[int, int]]] = {}
        self.top = 0
        for i, word in enumerate(self.words):
            self._add(i, word, +1)

    def __getitem__(self, pair: tuple[int, int]) -> int:
        return self.counts.get(pair, 0)

    def _change(self, pair: tuple[int, int], delta: int) -> None:
        old = self.counts.get(pair, 0)
        new = old + delta
        if old:
            self.buckets[old].discard(pair)
        if new:
            self.counts[pair] = new
            self.buckets.setdefault(new, set()).add(pair)
            self.top = max(self.top, new)
        else:
            del self.counts[pair]

    def _add(self, i: int, word: list[int], sign: int) -> None:
        for pair, n in Counter(itertools.pairwise(word)).items():
            self._change(pair, sign * n * self.weights[i])
            if sign > 0:
                self.where.setdefault(pair, set()).add(i)

    def most_frequent(self) -> tuple[int, int] | None:
        """The pair with the highest count; among ties, the one whose first occurrence comes first."""
        while self.top and not self.buckets.get(self.top):
            self.top -= 1
        if not self.top:
            return None
        return min(self.buckets[self.top], key=self._first_occurrence)

    def _first_occurrence(self, pair: tuple[int, int]) -> tuple[int, int]:
        i = min(self.where[pair])
        word = self.words[i]
        return i, next(p for p in range(len(word) - 1) if (word[p], word[p + 1]) == pair)

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        """Replace ``pair`` by ``new_id`` in every word that holds it, updating the counts.

        Only the pairs that change are touched: the merged pair itself and its
        neighbours, e.g. merging (b, c) in a b c d turns (a, b) and (c, d) into
        (a, X) and (X, d).
        """
        words, where, change = self.words, self.where, self._change
        for i in where.pop(pair):
            old = words[i]
            words[i] = new = merge_pair(old, pair, new_id)
            before, after = Counter(itertools.pairwise(old)), Counter(itertools.pairwise(new))
            weight = self.weights[i]
            for p in before.keys() | after.keys():
                n_before, n_after = before[p], after[p]
                if n_before != n_after:
                    change(p, (n_after - n_before) * weight)
                    if not n_after and p != pair:
                        where[p].discard(i)
                    elif not n_before:
                        where.setdefault(p, set()).add(i)


def reference_merges(words: list[list[int]], weights: list[int],
                     num_merges: int) -> list[tuple[int, int]]:
    """The textbook loop, chapter 8's by hand: after every merge, count
    every pair again.

    Slow (each step costs the whole corpus), and kept as the reference
    that ``BPETokenizer``'s incremental counts are tested and benchmarked
    against. ``words`` are the pre-split pieces as byte ids, ``weights``
    how often each piece occurs. Returns the merged pairs in order; ids
    256, 257, ... are the new tokens.
    """
    merged = []
    for k in range(num_merges):
        pair_counts: dict[tuple[int, int], int] = {}
        for word, weight in zip(words, weights, strict=True):
            get_pair_counts(word, pair_counts, weight)
        if not pair_counts:
            break
        # the most frequent pair; the first seen wins a tie
        best = max(pair_counts, key=pair_counts.__getitem__)
        words = [merge_pair(word, best, 256 + k) if len(word) > 1 else word
                 for word in words]
        merged.append(best)
    return merged


class BPETokenizer(ByteLevelBPE):
    """Byte-level BPE tokenizer trained from scratch; ids 0-255 are the single bytes."""

    FILE_FORMAT = "llm_lib.BPETokenizer"
    FILE_VERSION = 1

    def __init__(self, pattern: str = GPT2_SPLIT_PATTERN):
        super().__init__(pattern)
        self.history: list[MergeStep] = []

    def train(self, text: str, vocab_size: int, verbose: bool = False,
              special_tokens: Iterable[str] = (ENDOFTEXT,)) -> list[MergeStep]:
        """Learn ``vocab_size - 256`` merges from ``text``; returns ``history``.

        Earlier training is discarded. ``special_tokens`` (and any already
        registered) are kept out of the merges: the text is cut at each one, as
        at a document boundary, so ``<|endoftext|>`` never becomes ``<|``,
        ``endoftext`` and ``|>``. Give them ids with ``register_special_tokens``.
        If ``text`` runs out of pairs first, raises ValueError and leaves the
        tokenizer with bytes only.
        """
        if vocab_size < 256:
            raise ValueError(
                f"vocab_size must be at least 256 (one id per byte value), got {vocab_size}"
            )
        num_merges = vocab_size - 256
        try:
            for step in self.train_steps(text, num_merges, special_tokens):
                if verbose:
                    print(f"merge {step.new_id - 255}/{num_merges}: {step.pair} -> {step.new_id} "
                          f"{self.vocab[step.new_id]!r} ({step.count} occurrences)")
        except ValueError:
            self._reset()
            raise
        return self.history

    def train_steps(self, text: str, num_merges: int,
                    special_tokens: Iterable[str] = (ENDOFTEXT,)) -> Iterator[MergeStep]:
        """Learn merges one by one, yielding each as soon as ``vocab`` and ``merges`` hold it.

        Stop iterating early to keep the merges so far. The most frequent pair wins;
        among equally frequent pairs, the one met first in the text does. Each step
        updates the pair counts of only the pieces that hold the merged pair
        (``reference_merges`` recounts everything, with the same result).
        """
        if num_merges < 0:
            raise ValueError(f"num_merges must be >= 0, got {num_merges}")
        self._reset()
        words, weights = self._training_pieces(text, special_tokens)
        counts = PairCounts(words, weights)
        for k in range(num_merges):
            best = counts.most_frequent()
            if best is None:
                raise ValueError(
                    f"the text only allows {k} merges (vocab_size up to {256 + k}), "
                    f"not {num_merges}: every piece of it is already a single token"
                )
            count = counts[best]
            counts.merge(best, 256 + k)
            yield self._add_merge(best, 256 + k, count)

    def _training_pieces(self, text: str, special_tokens: Iterable[str]) -> tuple[list[list[int]], list[int]]:
        """Each distinct pre-tokenised piece as bytes, with how often it occurs: the work scales
        with the number of distinct pieces, not with the length of the text."""
        specials = {*special_tokens, *self.special_tokens}
        parts = [_valid_unicode(text)]
        if specials:
            cut = "|".join(re.escape(name) for name in sorted(specials, key=len, reverse=True))
            parts = re.split(cut, parts[0])
        piece_counts = Counter(piece for part in parts for piece in self._splitter.findall(part))
        return [list(piece.encode("utf-8")) for piece in piece_counts], list(piece_counts.values())

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
