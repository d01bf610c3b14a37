"""GPT-2's tokenizer (chapter 8): our own reading of OpenAI's ``encoder.json`` and ``vocab.bpe``, and
tiktoken's fast implementation that the rest of the book uses.

``GPT2Tokenizer`` gives exactly the ids of ``tiktoken.get_encoding("gpt2")``.
Offline, point ``TIKTOKEN_CACHE_DIR`` at a folder holding tiktoken's two files.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .bpe import GPT2_SPLIT_PATTERN, ByteLevelBPE, bytes_to_unicode
from .simple import ENDOFTEXT

__all__ = [
    "GPT2Tokenizer",
    "get_gpt2_encoding",
]

class GPT2Tokenizer(ByteLevelBPE):
    """GPT-2's byte-level BPE read from ``encoder.json`` and ``vocab.bpe``; gives tiktoken's ids."""

    def __init__(self, encoder_json_path: str | os.PathLike | None = None,
                 vocab_bpe_path: str | os.PathLike | None = None):
        super().__init__(GPT2_SPLIT_PATTERN)
        if encoder_json_path is None or vocab_bpe_path is None:
            from ..data_sources import data_path

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
