"""The Llama pieces against Hugging Face transformers' Llama, with copied weights, on a tiny random model."""

import json

import pytest
import torch

from llm_lib.generate import generate
from llm_lib.llama import (
    GroupedQueryAttention,
    LlamaConfig,
    LlamaModel,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    unpermute_rope_rows,
)
from llm_lib.llama.loading import state_dict_from_hf
from llm_lib.model import count_parameters

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402

TINY = LlamaConfig(vocab_size=101, context_length=64, emb_dim=48, n_heads=6, n_kv_heads=2, n_layers=3,
                   hidden_dim=80, rope_base=500.0, norm_eps=1e-5)


def hf_config(cfg=TINY, attn="eager"):
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.context_length, hidden_size=cfg.emb_dim,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, num_hidden_layers=cfg.n_layers,
        intermediate_size=cfg.hidden_dim, rope_theta=cfg.rope_base, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_weights, attention_bias=False, mlp_bias=False,
    )
    hf_cfg._attn_implementation = attn
    return hf_cfg


def hf_model(cfg=TINY):
    torch.manual_seed(5)
    model = transformers.LlamaForCausalLM(hf_config(cfg)).eval()
    with torch.no_grad():  # norms start at one: make their scales matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
    return model


def ours_from(hf, cfg=TINY, **changes):
    model = LlamaModel(cfg.replace(**changes)).eval()
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg))
    return model


def _ids(batch=2, tokens=23):
    return torch.randint(0, TINY.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))


def hf_rope(tokens, cfg=TINY, start=0):
    rope = hf_llama.LlamaRotaryEmbedding(hf_config(cfg))
    x = torch.zeros(1, tokens, cfg.head_dim)
    return rope(x, torch.arange(start, start + tokens)[None])


def test_rmsnorm_matches_transformers():
    x = torch.randn(2, 7, 48) * 3 + 1
    ref = hf_llama.LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.normal_()
    ours = RMSNorm(48, eps=1e-5)
    ours.scale.data.copy_(ref.weight)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    # the root mean square of every normalised token is one (before the scale)
    assert torch.allclose(RMSNorm(48)(x).pow(2).mean(-1), torch.ones(2, 7), atol=1e-4)


@pytest.mark.parametrize("start", [0, 17])
def test_rotary_embedding_matches_transformers(start):
    q, k = torch.randn(2, 6, 9, 8), torch.randn(2, 2, 9, 8)
    cos, sin = hf_rope(9, start=start)
    ref_q, ref_k = hf_llama.apply_rotary_pos_emb(q, k, cos, sin)
    rope = RotaryEmbedding(TINY.head_dim, TINY.context_length, TINY.rope_base)
    torch.testing.assert_close(rope(q, start), ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(rope(k, start), ref_k, rtol=0, atol=1e-6)


def test_rotary_scores_depend_only_on_the_distance():
    rope = RotaryEmbedding(8, 64, 500.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    scores = [(rope(q, p + 5) * rope(k, p)).sum().item() for p in (0, 11, 40)]
    assert max(scores) - min(scores) < 1e-4
    assert torch.allclose(rope(q, 3).norm(), q.norm())  # a rotation keeps the length


def test_swiglu_matches_transformers():
    ref = hf_llama.LlamaMLP(hf_config())
    ours = SwiGLU(TINY.emb_dim, TINY.hidden_dim)
    for a, b in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        getattr(ours, a).weight.data.copy_(getattr(ref, b).weight)
    x = torch.randn(2, 5, TINY.emb_dim)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)


@pytest.fixture(params=["sdpa shares heads", "heads repeated"])
def sdpa_gqa(request, monkeypatch):
    """Run the fused path both ways: with sdpa's enable_gqa (torch >= 2.5) and with repeated heads."""
    if request.param == "heads repeated":
        monkeypatch.setattr("llm_lib.llama.model._SDPA_GQA", False)
    return request.param


@pytest.mark.parametrize("fused", [False, True])
def test_grouped_query_attention_matches_transformers(fused, sdpa_gqa):
    ref = hf_llama.LlamaAttention(hf_config(), layer_idx=0).eval()
    rope = RotaryEmbedding(TINY.head_dim, TINY.context_length, TINY.rope_base)
    ours = GroupedQueryAttention(TINY.emb_dim, TINY.emb_dim, TINY.context_length, TINY.n_heads,
                                 TINY.n_kv_heads, rope, fused=fused)
    for a, b in (("W_query", "q_proj"), ("W_key", "k_proj"), ("W_value", "v_proj"), ("out_proj", "o_proj")):
        getattr(ours, a).weight.data.copy_(getattr(ref, b).weight)
    x = torch.randn(2, 11, TINY.emb_dim)
    mask = torch.full((11, 11), -torch.inf).triu(1)[None, None]
    with torch.no_grad():
        expected, _ = ref(x, position_embeddings=hf_rope(11), attention_mask=mask)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    assert ours.W_key.weight.shape == (TINY.n_kv_heads * TINY.head_dim, TINY.emb_dim)


def test_one_kv_head_per_query_head_is_multi_head_attention():
    cfg = TINY.replace(n_kv_heads=TINY.n_heads)
    hf = hf_model(cfg)
    with torch.no_grad():
        torch.testing.assert_close(ours_from(hf, cfg)(_ids()), hf(_ids()).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_model_logits_match_transformers(fused):
    hf = hf_model()
    ours = ours_from(hf, fused_attention=fused)
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), hf(_ids()).logits, rtol=0, atol=1e-4)
    assert ours.out_head.weight is ours.tok_emb.weight
    assert count_parameters(ours) == TINY.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_untied_head_and_parameter_count():
    cfg = TINY.replace(tie_weights=False)
    hf = hf_model(cfg)
    ours = ours_from(hf, cfg)
    assert ours.out_head.weight is not ours.tok_emb.weight
    assert count_parameters(ours) == cfg.num_parameters() == sum(p.numel() for p in hf.parameters())
    with torch.no_grad():
        torch.testing.assert_close(ours(_ids()), hf(_ids()).logits, rtol=0, atol=1e-4)


def test_smollm2_135m_parameter_count():
    with torch.device("meta"):
        model = LlamaModel(LlamaConfig.smollm2_135m())
    assert count_parameters(model) == LlamaConfig.smollm2_135m().num_parameters() == 134_515_008


@pytest.mark.parametrize("fused", [False, True])
def test_kv_cache_gives_the_same_logits(fused, sdpa_gqa):
    model = ours_from(hf_model(), fused_attention=fused)
    ids = _ids(tokens=12)
    cache = model.new_kv_cache()
    with torch.no_grad():
        full = model(ids)
        pieces = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache)
                                                        for t in range(5, 9)]
        pieces.append(model(ids[:, 9:], kv_cache=cache))  # several new tokens after cached ones
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    assert cache.layers[0].keys.shape[1] == TINY.n_kv_heads  # only the shared heads are stored


def test_logits_at_chosen_positions_equal_the_full_forward_sliced():
    model = ours_from(hf_model())
    ids = _ids(tokens=6)
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, positions=-1), full[:, -1])
        last = torch.arange(ids.shape[0]) % ids.shape[1]
        torch.testing.assert_close(model(ids, positions=last), full[torch.arange(ids.shape[0]), last])


def test_generate_matches_transformers_greedy_and_respects_eos():
    hf = hf_model()
    ours = ours_from(hf)
    prompt = _ids(batch=1, tokens=6)
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
    for use_cache in (False, True):
        assert torch.equal(generate(ours, prompt, 15, TINY.context_length, use_cache=use_cache), expected)
    eos = expected[0, 9].item()
    stopped = generate(ours, prompt, 15, TINY.context_length, eos_id=eos, use_cache=True)
    assert stopped.shape[1] < expected.shape[1] and eos not in stopped[0, 6:].tolist()


def test_sampling_is_seeded_and_top_k_limits_choices():
    ours = ours_from(hf_model())
    prompt = _ids(batch=1, tokens=4)

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return generate(ours, prompt, 10, TINY.context_length, temperature=1.0, generator=g, use_cache=True, **kw)

    assert torch.equal(sample(1), sample(1))
    top1 = sample(2, top_k=1)
    assert torch.equal(top1, generate(ours, prompt, 10, TINY.context_length))


def test_unpermute_undoes_llama_cpp_order():
    # llama.cpp's converter: rows of each head (all firsts, all seconds) -> interleaved pairs
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)
    interleaved = w.reshape(2, 2, 4, 3).transpose(1, 2).reshape(16, 3)
    assert torch.equal(unpermute_rope_rows(interleaved, num_heads=2), w)


def test_bad_configurations_and_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="n_kv_heads=4"):
        LlamaConfig(n_heads=9, n_kv_heads=4)
    with pytest.raises(ValueError, match="must be even"):
        LlamaConfig(emb_dim=45, n_heads=9, n_kv_heads=3)
    model = LlamaModel(TINY)
    with pytest.raises(ValueError, match="context_length is 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 101\)"):
        model(torch.tensor([[3, 101]]))
    with pytest.raises(ValueError, match="batch dimension"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="empty sequence"):
        model(torch.zeros(2, 0, dtype=torch.long))
    cache = model.new_kv_cache(max_tokens=8)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="max_tokens=8"):
            model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_hub_folder_loads_like_transformers(tmp_path, monkeypatch):
    """A folder of hub files (config.json, tokenizer.json, model.safetensors) loads as the hub's model does."""
    from llm_lib.llama import load_smollm2

    hf = hf_model()
    hf.save_pretrained(tmp_path)  # model.safetensors + config.json, as on the hub
    vocab = {f"t{i}": i for i in range(TINY.vocab_size)}
    for b in "abcdefghijklmnopqrstuvwxyz":
        vocab[b] = vocab.pop(f"t{ord(b) - 97}")
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "added_tokens": [], "pre_tokenizer": {"type": "ByteLevel"}}))
    model, _ = load_smollm2(tmp_path)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), hf(_ids()).logits, rtol=0, atol=1e-4)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_smollm2(tmp_path)
