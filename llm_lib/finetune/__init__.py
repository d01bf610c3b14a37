"""Finetuning a pretrained GPT: a spam classifier (chapter 33) and an instruction follower (chapter 34).

``llm_lib.finetune`` gathers the public names of its parts:
``common`` (splitting a dataset), ``spam_data`` and ``classify`` (chapter 33), ``instruct`` (chapter 34),
``instruct_recipe`` (chapter 34's run, cached) and ``lora`` (low-rank adapters).
"""

from . import classify, common, instruct, instruct_recipe, lora, spam_data
from .classify import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .instruct import *  # noqa: F401,F403
from .instruct_recipe import *  # noqa: F401,F403
from .lora import *  # noqa: F401,F403
from .spam_data import *  # noqa: F401,F403

__all__ = [*common.__all__, *spam_data.__all__, *classify.__all__, *instruct.__all__, *instruct_recipe.__all__,
           *lora.__all__]
