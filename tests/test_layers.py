"""Layers against torch.nn's reference implementations."""

import torch
import torch.nn.functional as F

from llm_lib.layers import (
    GELU,
    FeedForward,
    FusedGELU,
    FusedLayerNorm,
    LayerNorm,
    TransformerBlock,
    cached_block,
    fuse_layers,
)
from llm_lib.model import GPTConfig


def test_layernorm_matches_torch():
    ln = LayerNorm(16)
    with torch.no_grad():
        ln.scale.uniform_(0.5, 1.5)
        ln.shift.uniform_(-1, 1)
    x = torch.randn(3, 5, 16) * 4 + 2
    ref = F.layer_norm(x, (16,), ln.scale, ln.shift, eps=ln.eps)
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ln(x), torch.nn.LayerNorm(16)(x) * ln.scale + ln.shift,
                               atol=1e-5, rtol=1e-5)


def test_fused_layernorm_and_gelu_compute_the_teaching_functions():
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 16) * 4 + 2).requires_grad_()
    plain, fused = LayerNorm(16), FusedLayerNorm(16)
    with torch.no_grad():
        plain.scale.uniform_(0.5, 1.5)
        plain.shift.uniform_(-1, 1)
    fused.load_state_dict(plain.state_dict())  # same parameter names: checkpoints are interchangeable
    for module in (plain, fused):
        module(x).pow(2).sum().backward()
    torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.scale.grad, plain.scale.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused.shift.grad, plain.shift.grad, atol=1e-4, rtol=1e-4)
    z = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(FusedGELU()(z), GELU()(z))



def test_fuse_layers_swaps_in_the_kernels_and_keeps_the_parameters():
    torch.manual_seed(3)
    block = TransformerBlock(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1,
                                       drop_rate=0.0))
    with torch.no_grad():
        block.norm1.shift.uniform_(-1, 1)
    x = torch.randn(2, 8, 16)
    before, params = block(x), dict(block.named_parameters())
    assert fuse_layers(block) is block
    assert type(block.norm1) is FusedLayerNorm and type(block.norm2) is FusedLayerNorm
    assert type(block.ff.layers[1]) is FusedGELU
    assert all(p is params[name] for name, p in block.named_parameters())  # the same tensors, not copies
    torch.testing.assert_close(block(x), before, atol=1e-5, rtol=1e-5)


def test_layernorm_eps_keeps_constant_rows_finite():
    out = LayerNorm(4)(torch.full((1, 4), 3.0))
    assert torch.isfinite(out).all() and torch.allclose(out, torch.zeros(1, 4))


def test_gelu_matches_torch_tanh_approximation():
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(GELU()(x), F.gelu(x, approximate="tanh"))
    assert (GELU()(x) - F.gelu(x)).abs().max() < 1e-3  # close to the exact erf form too


def test_feedforward_shapes():
    ff = FeedForward(768)
    assert ff.layers[0].weight.shape == (3072, 768)
    assert ff(torch.randn(2, 3, 768)).shape == (2, 3, 768)


def test_transformer_block_preserves_shape_and_is_causal():
    cfg = GPTConfig(vocab_size=10, context_length=8, emb_dim=16, n_heads=4, n_layers=1,
                    drop_rate=0.0)
    block = TransformerBlock(cfg)
    x = torch.randn(2, 8, 16)
    out = block(x)
    assert out.shape == x.shape
    y = x.clone()
    y[:, -1] += 1.0
    torch.testing.assert_close(block(y)[:, :-1], out[:, :-1])


def test_transformer_block_with_kv_cache_equals_full_pass():
    from llm_lib.attention import LayerKVCache

    cfg = GPTConfig(vocab_size=10, context_length=8, emb_dim=16, n_heads=4, n_layers=1, drop_rate=0.0)
    block = TransformerBlock(cfg)
    x = torch.randn(2, 7, 16)
    cache = LayerKVCache(8)
    with torch.no_grad():
        parts = [cached_block(block, x[:, a:b], cache) for a, b in [(0, 5), (5, 6), (6, 7)]]
        torch.testing.assert_close(torch.cat(parts, dim=1), block(x), atol=1e-6, rtol=1e-5)
        assert torch.equal(cached_block(block, x), block(x))  # without a cache: the very same operations
