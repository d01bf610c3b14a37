"""Evaluating LLMs (chapter 35): multiple-choice benchmarks, an LLM as judge, and human ratings.

- ``mmlu``: questions in the style of MMLU, scored by the answer letter the
  model finds most likely;
- ``judge``: a larger model, served at a URL (Ollama or any OpenAI-compatible
  server), rates a response from 0 to 100 against a reference answer;
- ``human``: a person rates responses beside their instruction and reference.

Every public name is importable from ``llm_lib.evaluate`` itself.
"""

from . import human, judge, mmlu
from .human import *  # noqa: F401,F403
from .judge import *  # noqa: F401,F403
from .mmlu import *  # noqa: F401,F403

__all__ = [*mmlu.__all__, *judge.__all__, *human.__all__]
