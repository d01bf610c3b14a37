"""Finetuning a pretrained GPT: a spam classifier (chapter 33) and an instruction follower (chapter 34).

``llm_lib.finetune`` gathers the public names of its parts:
``common`` (splitting a dataset), ``classify`` (chapter 33) and ``instruct`` (chapter 34).
"""

from . import classify, common, instruct
from .classify import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .instruct import *  # noqa: F401,F403

__all__ = [*common.__all__, *classify.__all__, *instruct.__all__]
