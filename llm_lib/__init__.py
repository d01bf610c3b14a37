"""llm_lib: GPT-2 built from scratch in PyTorch, one module per chapter of the book.

Modules, in the order the book meets them: ``data_sources``, ``tokenizer``,
``data``, ``attention``, ``layers``, ``config`` and ``model``, ``generate``,
``train`` and ``history``, ``checkpoints``, ``pretraining``, ``weights`` and
``hub``, ``llama``, ``finetune``, ``evaluate``, ``distributed``; ``viz`` and
``source`` serve the book's pages. Import what you need from them, e.g.
``from llm_lib.model import GPTConfig, GPTModel``.
"""

__version__ = "0.1.0"
