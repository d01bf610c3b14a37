"""SmolLM2's tokenizer with our own byte-level BPE, and its ChatML chat format (chapter 32).

The vocabulary and merges come from the GGUF file (``tokenizer.ggml.*``) or a
Hugging Face ``tokenizer.json``; both spell tokens in GPT-2's stand-in
characters (``Ġ`` for a space). Encoding is chapter 8's ``ByteLevelBPE`` with one
extra rule SmolLM2 was trained with: every digit is a piece of its own, so
numbers are read digit by digit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import regex

from ..tokenizer.bpe import GPT2_SPLIT_PATTERN, ByteLevelBPE, bytes_to_unicode

__all__ = ["SmolLM2Tokenizer", "format_chat", "DEFAULT_SYSTEM_PROMPT"]

# The system message SmolLM2-Instruct's chat template adds when a conversation has none.
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_DIGIT = regex.compile(r"(\p{N})")  # split off every digit, keeping it (llama.cpp's "smollm" rule)


class SmolLM2Tokenizer(ByteLevelBPE):
    """Byte-level BPE read from a token list and a merge list: ``encode(text) -> ids``, ``decode(ids) -> text``.

    ``tokens[i]`` is token ``i`` spelled in GPT-2's stand-in characters;
    ``merges`` are ``"left right"`` strings in the order they were learned;
    ``special`` names the ids of control tokens such as ``<|im_start|>``.
    SmolLM2 has no token for 21 byte values: 15 that UTF-8 never uses (0xC0,
    0xFF, ...) and six control characters (U+0004, U+0006, U+0013, U+0014,
    U+0016, U+001D). Text holding one of those is refused with a ``ValueError``
    (Hugging Face's tokenizer drops such characters without a word).
    """

    def __init__(self, tokens: Sequence[str], merges: Iterable[str], special: Iterable[int],
                 split_digits: bool = True):
        super().__init__(GPT2_SPLIT_PATTERN)
        self.split_digits = split_digits
        special = set(special)
        byte_of_char = {char: byte for byte, char in bytes_to_unicode().items()}
        self._id_of = {token: i for i, token in enumerate(tokens)}
        self.vocab = {i: bytes(byte_of_char[c] for c in token)
                      for i, token in enumerate(tokens) if i not in special}
        stand_in = bytes_to_unicode()
        self._byte_ids = [self._id_of.get(stand_in[byte], -1) for byte in range(256)]
        unspellable = [chr(b) for b in range(128) if self._byte_ids[b] < 0]  # bytes >= 0x80 are never alone
        self._unspellable = regex.compile("[" + regex.escape("".join(unspellable)) + "]") if unspellable else None
        self.merges = {}
        previous_id = -1
        for rank, merge in enumerate(merges):
            left, right = merge.split(" ")
            new_id = self._id_of[left + right]
            # ByteLevelBPE applies the merge with the smallest new id first: ids must grow with rank
            if new_id <= previous_id:
                raise ValueError(f"merge {rank} ({merge!r}) makes id {new_id}, not above the previous "
                                 f"merge's {previous_id}: this vocabulary needs explicit merge ranks")
            self.merges[(self._id_of[left], self._id_of[right])] = previous_id = new_id
        self.register_special_tokens({tokens[i]: i for i in sorted(special)})

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> SmolLM2Tokenizer:
        """Read a Hugging Face ``tokenizer.json`` of a byte-level BPE (SmolLM2's on the hub)."""
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        model = spec["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"{path} describes a {model.get('type')} tokenizer, not byte-level BPE")
        vocab: dict[str, int] = dict(model["vocab"])
        for added in spec.get("added_tokens", []):
            vocab[added["content"]] = added["id"]
        tokens = [""] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            tokens[i] = token
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        special = [a["id"] for a in spec.get("added_tokens", []) if a.get("special")]
        return cls(tokens, merges, special, split_digits="Digits" in json.dumps(spec.get("pre_tokenizer")))

    def encode(self, text: str, allowed_special: str | Iterable[str] = "all",
               disallowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of ``text``; control tokens written in it (``<|im_start|>``) become their ids.

        That is what a chat prompt needs; pass ``allowed_special=set()`` to make
        such text an error instead, as ``ByteLevelBPE.encode`` does by default.
        """
        return super().encode(text, allowed_special, disallowed_special)

    def _refuse_unspellable(self, text: str, start: int, end: int) -> None:
        if self._unspellable and (bad := self._unspellable.search(text, start, end)):
            raise ValueError(
                f"the text holds the control character U+{ord(bad[0]):04X} "
                f"at index {bad.start()}, which this vocabulary has no "
                f"token for; remove it first")

    def pretokenize(self, text: str, end: int | None = None) -> list[str]:
        """GPT-2's pieces of ``text[:end]``, each digit a piece of its own."""
        end = len(text) if end is None else end
        self._refuse_unspellable(text, 0, end)
        if not self.split_digits:
            return super().pretokenize(text, end)
        pieces, start = [], 0  # each digit alone, GPT-2's split between them
        for digit in _DIGIT.finditer(text, 0, end):
            pieces += self._splitter.findall(text, start, digit.start())
            pieces.append(digit[0])
            start = digit.end()
        return pieces + self._splitter.findall(text, start, end)

    def token_id(self, token: str) -> int:
        """Id of a token given in its vocabulary spelling, e.g. ``"<|im_end|>"`` -> 2."""
        try:
            return self._id_of[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this vocabulary") from None

    def encode_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation in ChatML (``format_chat``)."""
        return self.encode(format_chat(messages, add_generation_prompt))


def format_chat(messages: Sequence[Mapping[str, str]],
                add_generation_prompt: bool = True,
                default_system: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """SmolLM2-Instruct's chat template (ChatML) as text.

    ``messages`` are ``{"role": "system" | "user" | "assistant", "content":
    ...}``. Each becomes ``<|im_start|>role\ncontent<|im_end|>\n``; a system
    message goes first when there is none, and ``add_generation_prompt``
    opens the assistant's turn for the model to write.
    """
    if not messages:
        raise ValueError("a conversation needs at least one message")
    blocks = []
    if messages[0].get("role") != "system":
        blocks.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for k, message in enumerate(messages):
        if not {"role", "content"} <= set(message):
            raise ValueError(f"message {k} needs a 'role' and a 'content', "
                             f"got the keys {sorted(message)}")
        role, content = message["role"], message["content"]
        blocks.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        blocks.append("<|im_start|>assistant\n")
    return "".join(blocks)
