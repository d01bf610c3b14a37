"""Decoding: greedy, temperature, top-k and end-of-text."""

import pytest
import torch

from llm_lib.generate import (
    generate,
    generate_text_simple,
    next_token_probabilities,
    text_to_token_ids,
    token_ids_to_text,
)
from llm_lib.model import GPTConfig, GPTModel
from llm_lib.tokenizer import get_gpt2_encoding

CFG = GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1)


@pytest.fixture
def model():
    torch.manual_seed(5)
    return GPTModel(CFG)


def test_temperature_zero_is_greedy(model):
    idx = torch.tensor([[1, 2, 3]])
    greedy = generate_text_simple(model, idx, 12, CFG.context_length)
    assert greedy.shape == (1, 15)
    assert torch.equal(generate(model, idx, 12, CFG.context_length, temperature=0.0), greedy)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0])
def test_top_k_one_is_greedy_at_any_temperature(model, temperature):
    idx = torch.tensor([[4, 5], [6, 7]])
    greedy = generate_text_simple(model, idx, 10, CFG.context_length)
    sampled = generate(model, idx, 10, CFG.context_length, temperature=temperature, top_k=1)
    assert torch.equal(sampled, greedy)


def test_top_k_never_samples_outside_the_k_most_likely():
    logits = torch.randn(4, 50)
    k = 5
    allowed = torch.topk(logits, k).indices
    probs = next_token_probabilities(logits, temperature=3.0, top_k=k)
    samples = torch.multinomial(probs, 2000, replacement=True)
    for row in range(4):
        assert set(samples[row].tolist()) <= set(allowed[row].tolist())
    assert (probs > 0).sum(-1).eq(k).all()


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([2.0, 1.0, 0.0])
    cold, warm = next_token_probabilities(logits, 0.5), next_token_probabilities(logits, 2.0)
    assert cold[0] > torch.softmax(logits, -1)[0] > warm[0]


def test_seeded_sampling_is_reproducible(model):
    idx = torch.tensor([[1]])
    a = generate(model, idx, 10, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, idx, 10, 8, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_generation_restores_training_mode(model):
    model.train()
    generate(model, torch.tensor([[1]]), 2, 8)
    assert model.training


def test_eos_stops_generation(model):
    idx = torch.tensor([[1, 2]])
    greedy = generate_text_simple(model, idx, 5, CFG.context_length)
    first_new = greedy[0, 2].item()
    out = generate(model, idx, 5, CFG.context_length, eos_id=first_new)
    assert torch.equal(out, idx)


def test_long_prompts_are_cropped_to_the_context(model):
    idx = torch.randint(0, 50, (1, 20))
    assert generate(model, idx, 3, CFG.context_length).shape == (1, 23)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": 1.0, "top_k": 0}, "top_k must be at least 1"),
])
def test_bad_sampling_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1]]), 2, 8, **kwargs)


def test_text_round_trip():
    tok = get_gpt2_encoding()
    ids = text_to_token_ids("Every effort moves you<|endoftext|>", tok)
    assert ids.shape == (1, 5) and ids[0, -1].item() == 50256
    assert token_ids_to_text(ids, tok) == "Every effort moves you<|endoftext|>"
