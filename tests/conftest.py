"""Point the data loaders at the offline copy beside the repository when one is there."""

import os
from pathlib import Path

import pytest
import torch

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("LLM_LIB_DATA_DIR", str(_SHARED))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_SHARED / "tiktoken_cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(123)
