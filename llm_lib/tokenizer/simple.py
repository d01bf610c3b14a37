"""Word-level tokenizers (chapter 7): words and punctuation looked up in a fixed vocabulary.

``SimpleTokenizerV1`` refuses words it has not seen; ``SimpleTokenizerV2`` maps
them to ``<|unk|>`` and puts ``<|endoftext|>`` between documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "ENDOFTEXT",
    "UNKNOWN_TOKEN",
    "SimpleTokenizerV1",
    "SimpleTokenizerV2",
    "UnknownTokenError",
    "build_vocab",
    "split_text",
]

ENDOFTEXT = "<|endoftext|>"
UNKNOWN_TOKEN = "<|unk|>"


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
    """Word-level tokenizer over a fixed vocabulary (chapter 7); a word
    outside the vocabulary is an error."""

    def __init__(self, vocab: Mapping[str, int]):
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in self.str_to_int.items()}
        if len(self.int_to_str) != len(self.str_to_int):
            raise ValueError("vocab gives the same id to two tokens; "
                             "ids must be unique")

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.str_to_int)

    def encode(self, text: str) -> list[int]:
        """Ids of the words and punctuation marks of ``text``."""
        return [self._token_id(token) for token in split_text(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens joined by single spaces, none before punctuation.

        Whitespace is not stored, so this is ``text`` only up to spacing:
        ``decode(encode("Hi,  you"))`` gives ``"Hi, you"``.
        """
        tokens = []
        for i in ids:
            if i not in self.int_to_str:
                raise ValueError(f"token id {i!r} is not in this vocabulary "
                                 f"of {self.vocab_size} tokens")
            tokens.append(self.int_to_str[i])
        # "Hello , world ." -> "Hello, world."
        return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(tokens))

    def _token_id(self, token: str) -> int:
        try:
            return self.str_to_int[token]
        except KeyError:
            raise UnknownTokenError(
                f"{token!r} is not in the vocabulary ({self.vocab_size} "
                f"tokens); add it to the vocabulary, or use "
                f"SimpleTokenizerV2, which maps unknown words to "
                f"{UNKNOWN_TOKEN}"
            ) from None


class SimpleTokenizerV2(SimpleTokenizerV1):
    """Word-level tokenizer (chapter 7): unknown words become ``<|unk|>``,
    and ``<|endoftext|>`` stays one token."""

    def __init__(self, vocab: Mapping[str, int]):
        needed = (UNKNOWN_TOKEN, ENDOFTEXT)
        missing = [token for token in needed if token not in vocab]
        if missing:
            raise ValueError(
                f"SimpleTokenizerV2 needs {missing} in its vocabulary; "
                f"build it with build_vocab(tokens, special_tokens="
                f"[{ENDOFTEXT!r}, {UNKNOWN_TOKEN!r}])"
            )
        super().__init__(vocab)
        self.unk_id = self.str_to_int[UNKNOWN_TOKEN]

    def _token_id(self, token: str) -> int:
        return self.str_to_int.get(token, self.unk_id)
