"""Sliding-window datasets and loaders."""

import pytest
import torch

from llm_lib.data import GPTDataset, create_dataloader
from llm_lib.data_sources import load_text
from llm_lib.tokenizer import get_gpt2_encoding


def test_windows_are_shifted_by_one():
    tok = get_gpt2_encoding()
    text = load_text("the-verdict.txt")
    ds = GPTDataset(text, tok, max_length=4, stride=1)
    ids = tok.encode(text)
    assert len(ds) == len(ids) - 4
    x, y = ds[10]
    assert x.tolist() == ids[10:14] and y.tolist() == ids[11:15]


@pytest.mark.parametrize("stride", [1, 2, 4, 5])
def test_stride_sets_the_window_starts(stride):
    tok = get_gpt2_encoding()
    text = load_text("the-verdict.txt")[:2000]
    ds = GPTDataset(text, tok, max_length=4, stride=stride)
    n = len(tok.encode(text))
    assert len(ds) == len(range(0, n - 4, stride))
    assert ds[1][0][0].item() == tok.encode(text)[stride]


def test_loader_batches_and_default_tokenizer():
    loader = create_dataloader(load_text("the-verdict.txt"), batch_size=8, max_length=4,
                               stride=4, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (8, 4)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_seeded_shuffle_is_reproducible():
    text = load_text("the-verdict.txt")
    a = next(iter(create_dataloader(text, batch_size=4, max_length=8, stride=8, seed=42)))[0]
    b = next(iter(create_dataloader(text, batch_size=4, max_length=8, stride=8, seed=42)))[0]
    c = next(iter(create_dataloader(text, batch_size=4, max_length=8, stride=8, seed=43)))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_text_too_short_for_one_window():
    with pytest.raises(ValueError, match="too few for one window of max_length=256"):
        create_dataloader("Just a few words.", max_length=256)


def test_too_few_windows_for_a_batch():
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        create_dataloader("one two three four five six seven eight nine ten", batch_size=8,
                          max_length=4, stride=4)
