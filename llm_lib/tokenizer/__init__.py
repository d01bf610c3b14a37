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

One module per idea: ``simple`` (the word-level tokenizers), ``bpe`` (byte-pair
encoding), ``bpe_training`` (learning the merges) and ``gpt2`` (GPT-2's own
tokenizer). Every public name is importable from ``llm_lib.tokenizer`` itself.
"""

from . import bpe, bpe_training, gpt2, simple
from .bpe import *  # noqa: F401,F403
from .bpe_training import *  # noqa: F401,F403
from .gpt2 import *  # noqa: F401,F403
from .simple import *  # noqa: F401,F403

__all__ = [*simple.__all__, *bpe.__all__, *bpe_training.__all__, *gpt2.__all__]
