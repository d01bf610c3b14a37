"""Decoding: greedy, temperature, top-k and end-of-text."""

import pytest
import torch

from llm_lib.fast import FastGPTModel
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
    return FastGPTModel(CFG)


def test_temperature_zero_is_greedy(model):
    idx = torch.tensor([[1, 2, 3]])
    greedy = generate_text_simple(model, idx, 12, CFG.context_length)
    assert greedy.shape == (1, 15)
    assert torch.equal(generate(model, idx, 12, CFG.context_length, temperature=0.0), greedy)
    torch.manual_seed(5)  # chapter 24's GPTModel, the same weights: the same tokens
    assert torch.equal(generate_text_simple(GPTModel(CFG), idx, 12, CFG.context_length), greedy)


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
    ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, r"temperature must be a finite number >= 0 .*, got nan"),
    ({"temperature": float("inf")}, r"temperature must be a finite number >= 0 .*, got inf"),
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


# --- the KV cache (chapter 36): the same tokens as recomputing the whole window -------------------------


@pytest.fixture(params=[False, True], ids=["explicit", "fused"])
def any_model(request):
    torch.manual_seed(5)
    return FastGPTModel(CFG.replace(fused_attention=request.param))


def test_cached_greedy_decoding_gives_the_same_tokens(any_model):
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    # 3 + 12 tokens overflow the context of 8: the cached path recomputes the sliding window there.
    plain = generate_text_simple(any_model, idx, 12, CFG.context_length)
    assert torch.equal(generate(any_model, idx, 12, CFG.context_length, use_cache=True), plain)
    assert torch.equal(generate(any_model, idx, 12, CFG.context_length), plain)


@pytest.mark.parametrize("context_size", [8, 5])
def test_cached_seeded_sampling_gives_the_same_tokens(any_model, context_size):
    idx = torch.tensor([[1, 2], [3, 4], [5, 6]])
    kwargs = dict(temperature=1.5, top_k=20)
    plain = generate(any_model, idx, 10, context_size, generator=torch.Generator().manual_seed(3), **kwargs)
    cached = generate(any_model, idx, 10, context_size, generator=torch.Generator().manual_seed(3),
                      use_cache=True, **kwargs)
    assert torch.equal(cached, plain)
    assert not torch.equal(plain, generate_text_simple(any_model, idx, 10, context_size))  # it did sample


def test_cached_generation_stops_at_eos_like_the_uncached_one(model):
    idx = torch.tensor([[1, 2], [3, 4]])
    first_new = generate_text_simple(model, idx, 1, CFG.context_length)[0, 2].item()
    plain = generate(model, idx, 5, CFG.context_length, eos_id=first_new)
    assert torch.equal(generate(model, idx, 5, CFG.context_length, eos_id=first_new, use_cache=True), plain)


def test_padded_vocabulary_generates_the_same_tokens(model):
    padded = FastGPTModel(CFG.replace(vocab_pad_multiple=64))
    padded.load_state_dict(model.state_dict())
    idx = torch.tensor([[1, 2, 3]])
    expected = generate(model, idx, 6, 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    got = generate(padded, idx, 6, 8, temperature=1.0, generator=torch.Generator().manual_seed(0),
                   use_cache=True)
    assert torch.equal(got, expected)


def test_use_cache_needs_a_model_with_a_cache():
    class Plain(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, 5)

    with pytest.raises(TypeError, match="use_cache=True needs a model with a KV cache"):
        generate(Plain(), torch.tensor([[1]]), 2, 8, use_cache=True)


def test_cache_runs_one_token_per_step_until_the_context_is_full(model):
    lengths = []
    # every step embeds the tokens it runs, whether through forward or backbone
    model.tok_emb.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    generate(model, torch.tensor([[1, 2, 3]]), 8, CFG.context_length, use_cache=True)
    # prompt of 3, then one token at a time up to 8 tokens, then the sliding window of 8 each step
    assert lengths == [3, 1, 1, 1, 1, 1, 8, 8]
    lengths.clear()
    generate(model, torch.tensor([[1, 2, 3]]), 8, CFG.context_length)
    assert lengths == [3, 4, 5, 6, 7, 8, 8, 8]


def test_input_major_weights_keep_the_model_and_its_greedy_tokens(tmp_path):
    from llm_lib.checkpoints import load_checkpoint, save_checkpoint
    from llm_lib.generate import generate, store_weights_input_major
    from llm_lib.model import GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=300, context_length=32, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.0,
                    tie_weights=True)
    plain = FastGPTModel(cfg).eval()
    fast = FastGPTModel(cfg).eval()
    fast.load_state_dict(plain.state_dict())
    head = fast.out_head.weight
    assert store_weights_input_major(fast) is fast and fast.out_head.weight is head   # same Parameter
    assert not head.is_contiguous() and head.t().is_contiguous() and fast.tok_emb.weight is head
    store_weights_input_major(fast)                                                   # idempotent
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 300, (2, 5))
    torch.testing.assert_close(fast(ids), plain(ids), rtol=1e-5, atol=1e-5)
    assert torch.equal(generate(fast, ids, 12, 32, use_cache=True), generate(plain, ids, 12, 32, use_cache=True))
    again = FastGPTModel(cfg)
    load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", fast), again)   # saved as usual
    assert torch.equal(again.out_head.weight, plain.out_head.weight) and again.out_head.weight.is_contiguous()
