"""Attention against PyTorch's own scaled-dot-product attention, and each step against the next."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_lib.attention import (
    CausalAttention,
    LayerKVCache,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    cached_attention,
    causal_mask,
    simple_attention,
)


def test_simple_attention_matches_loops():
    x = torch.rand(6, 3)
    context, weights = simple_attention(x, return_weights=True)
    for i in range(6):
        scores = torch.tensor([x[i] @ x[j] for j in range(6)])
        w = scores.exp() / scores.exp().sum()
        torch.testing.assert_close(weights[i], w)
        torch.testing.assert_close(context[i], sum(w[j] * x[j] for j in range(6)))
    assert torch.allclose(weights.sum(-1), torch.ones(6))


def test_self_attention_v1_equals_v2_and_sdpa():
    x = torch.rand(6, 3)
    v1 = SelfAttentionV1(3, 2)
    v2 = SelfAttentionV2(3, 2).load_from_v1(v1)
    torch.testing.assert_close(v1(x), v2(x))
    q, k, v = x @ v1.W_query, x @ v1.W_key, x @ v1.W_value
    torch.testing.assert_close(v1(x), F.scaled_dot_product_attention(q, k, v))


def test_causal_attention_matches_sdpa_and_masking_routes():
    torch.manual_seed(0)
    att = CausalAttention(3, 4, context_length=8, dropout=0.0)
    x = torch.rand(2, 6, 3)
    q, k, v = att.W_query(x), att.W_key(x), att.W_value(x)
    torch.testing.assert_close(att(x), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # Route 2: softmax over everything, zero the future, renormalise.
    full = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(4), dim=-1)
    renorm = full.masked_fill(causal_mask(6), 0.0)
    renorm = renorm / renorm.sum(-1, keepdim=True)
    torch.testing.assert_close(att.attention_weights(x), renorm)


@pytest.mark.parametrize("fused", [False, True])
def test_multihead_matches_sdpa_on_its_own_projections(fused):
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 24, context_length=10, dropout=0.0, num_heads=3, qkv_bias=True)
    x = torch.randn(2, 7, 16)

    def heads(t):
        return t.view(2, 7, 3, 8).transpose(1, 2)

    ref = F.scaled_dot_product_attention(heads(mha.W_query(x)), heads(mha.W_key(x)),
                                         heads(mha.W_value(x)), is_causal=True)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(2, 7, 24))
    out = cached_attention(mha, x, fused=fused) if fused else mha(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mha.split_heads(mha.W_query(x)), heads(mha.W_query(x)))
    q = mha.W_query(x)
    assert torch.equal(mha.merge_heads(mha.split_heads(q)), q)  # the way back


def test_the_fast_path_computes_the_teaching_forward_exactly_or_fused():
    torch.manual_seed(2)
    mha = MultiHeadAttention(32, 32, 16, 0.1, num_heads=4)
    x = torch.randn(3, 16, 32)
    mha.eval()
    torch.testing.assert_close(cached_attention(mha, x, fused=True), mha(x), atol=1e-5, rtol=1e-5)
    mha.train()
    torch.manual_seed(7)
    explicit = cached_attention(mha, x)
    torch.manual_seed(7)
    assert torch.equal(mha(x), explicit)  # the same dropout mask too, drawn in the same order


def test_wrapper_equals_efficient_multihead():
    torch.manual_seed(3)
    wrapper = MultiHeadAttentionWrapper(5, 2, context_length=6, dropout=0.0, num_heads=3)
    x = torch.randn(2, 6, 5)
    out = wrapper(x)
    assert out.shape == (2, 6, 6)
    torch.testing.assert_close(wrapper.to_multihead()(x), out, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_future_tokens_never_change_the_past(fused):
    torch.manual_seed(4)
    layer = MultiHeadAttention(8, 8, 12, 0.0, num_heads=2)

    def mha(t):
        return cached_attention(layer, t, fused=fused)

    x = torch.randn(1, 10, 8)
    changed = x.clone()
    changed[:, 6:] = torch.randn(1, 4, 8)
    torch.testing.assert_close(mha(x)[:, :6], mha(changed)[:, :6])
    assert not torch.allclose(mha(x)[:, 6:], mha(changed)[:, 6:])


def test_attention_weights_are_causal_distributions():
    mha = MultiHeadAttention(8, 8, 12, 0.5, num_heads=2)
    w = mha.attention_weights(torch.randn(2, 5, 8))
    assert w.shape == (2, 2, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5))
    assert (w.triu(1) == 0).all()


def test_dropout_only_in_training():
    mha = MultiHeadAttention(8, 8, 12, 0.5, num_heads=2).eval()
    x = torch.randn(1, 5, 8)
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))


def test_heads_must_divide_d_out():
    with pytest.raises(ValueError, match="d_out=10 must be divisible by num_heads=3"):
        MultiHeadAttention(4, 10, 8, 0.0, num_heads=3)


@pytest.mark.parametrize("layer", [
    MultiHeadAttention(4, 4, 8, 0.0, num_heads=2),
    CausalAttention(4, 4, 8, 0.0),
])
def test_too_long_input_names_the_limit(layer):
    with pytest.raises(ValueError, match="context_length=8"):
        layer(torch.randn(1, 9, 4))


@pytest.mark.parametrize("fused", [False, True])
def test_kv_cache_gives_the_full_pass_chunk_by_chunk(fused):
    torch.manual_seed(5)
    mha = MultiHeadAttention(16, 16, 12, 0.0, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 11, 16)
    cache = LayerKVCache(max_tokens=12)
    with torch.no_grad():
        parts = [cached_attention(mha, x[:, a:b], cache, fused)
                 for a, b in [(0, 4), (4, 5), (5, 9), (9, 10), (10, 11)]]
    assert cache.length == 11 and cache.keys.shape == (2, 4, 12, 4)
    torch.testing.assert_close(torch.cat(parts, dim=1), mha(x), atol=1e-6, rtol=1e-5)
    # The cache holds exactly the keys and values of the full pass.
    torch.testing.assert_close(cache.values[:, :, :11], mha.split_heads(mha.W_value(x)))


def test_kv_cache_reset_starts_over():
    mha = MultiHeadAttention(8, 8, 6, 0.0, num_heads=2).eval()
    x = torch.randn(1, 5, 8)
    cache = LayerKVCache(max_tokens=6)
    with torch.no_grad():
        cached_attention(mha, torch.randn(1, 3, 8), cache)
        cache.reset()
        assert cache.length == 0
        torch.testing.assert_close(cached_attention(mha, x, cache), mha(x))


def test_kv_cache_limits_are_named():
    mha = MultiHeadAttention(4, 4, 8, 0.0, num_heads=2)
    with torch.no_grad():
        cache = LayerKVCache(max_tokens=5)
        cached_attention(mha, torch.randn(1, 4, 4), cache)
        with pytest.raises(ValueError, match="holds 4 tokens and has room for max_tokens=5"):
            cached_attention(mha, torch.randn(1, 2, 4), cache)
        big = LayerKVCache(max_tokens=20)
        cached_attention(mha, torch.randn(1, 6, 4), big)
        with pytest.raises(ValueError, match="3 new tokens after 6 cached ones .* context_length=8"):
            cached_attention(mha, torch.randn(1, 3, 4), big)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        LayerKVCache(0)
