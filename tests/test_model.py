"""GPTModel against Hugging Face transformers' GPT-2, and its parameter counts."""

import inspect
import math

import pytest
import torch

from llm_lib.fast import FastGPTModel
from llm_lib.layers import FusedGELU, FusedLayerNorm
from llm_lib.model import GPT2_SIZES, GPTConfig, GPTModel, count_parameters
from llm_lib.weights import export_gpt2_state_dict, load_gpt2_weights

transformers = pytest.importorskip("transformers")

SMALL = GPTConfig(vocab_size=97, context_length=32, emb_dim=48, n_heads=4, n_layers=3,
                  drop_rate=0.0, qkv_bias=True)


def hf_model(cfg=SMALL, tied=True):
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(7)
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # HF initialises biases to zero; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _ids(cfg=SMALL, batch=2, tokens=20):
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))


def test_logits_match_transformers_from_state_dict():
    hf = hf_model()
    ours = GPTModel(SMALL).eval()
    load_gpt2_weights(ours, hf.state_dict())
    ids = _ids()
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_logits_match_transformers_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    hf = hf_model()
    # The hub's files have no "transformer." prefix and no lm_head (it is tied).
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
          if k != "lm_head.weight"}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    ours = GPTModel(SMALL).eval()
    load_gpt2_weights(ours, path)
    ids = _ids()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_export_round_trips_into_transformers():
    torch.manual_seed(11)
    ours = GPTModel(SMALL).eval()
    hf = hf_model(tied=False)  # our model has a separate output head
    missing, unexpected = hf.load_state_dict(export_gpt2_state_dict(ours), strict=False)
    assert not unexpected and all(".attn.bias" in k for k in missing)
    ids = _ids()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_gpt2_checkpoint_needs_qkv_bias():
    model = GPTModel(SMALL.replace(qkv_bias=False))
    with pytest.raises(ValueError, match="qkv_bias=True"):
        load_gpt2_weights(model, hf_model().state_dict())


def test_checkpoint_of_wrong_size_names_the_tensor():
    model = GPTModel(SMALL.replace(context_length=16))
    with pytest.raises(ValueError, match="pos_emb.weight"):
        load_gpt2_weights(model, hf_model().state_dict())
    with pytest.raises(ValueError, match="n_layers=2"):
        load_gpt2_weights(GPTModel(SMALL.replace(n_layers=2)), hf_model().state_dict())


def test_gpt2_small_parameter_counts():
    with torch.device("meta"):
        model = GPTModel(GPTConfig.gpt2("small"))
    assert count_parameters(model) == 163_009_536
    assert count_parameters(model, tied=True) == 124_412_160
    assert GPTConfig.gpt2("small").num_parameters() == 163_009_536


@pytest.mark.parametrize("size", list(GPT2_SIZES))
def test_every_size_matches_closed_form(size):
    cfg = GPTConfig.gpt2(size)
    with torch.device("meta"):
        model = GPTModel(cfg)
    d, v, L, c = cfg.emb_dim, cfg.vocab_size, cfg.n_layers, cfg.context_length
    per_block = 12 * d * d + 10 * d  # qkv 3d², proj d²+d, mlp 8d²+5d, two norms 4d
    closed = 2 * v * d + c * d + L * per_block + 2 * d
    assert count_parameters(model) == closed == cfg.num_parameters()
    assert count_parameters(model, tied=True) == closed - v * d


def test_tied_weights_share_one_matrix():
    model = GPTModel(SMALL.replace(tie_weights=True))
    assert model.out_head.weight is model.tok_emb.weight
    assert count_parameters(model) == count_parameters(model, tied=True) == SMALL.num_parameters(tied=True)


def test_gpt2_presets():
    cfg = GPTConfig.gpt2("small")
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers,
            cfg.drop_rate, cfg.qkv_bias) == (50257, 1024, 768, 12, 12, 0.1, False)
    assert GPTConfig.gpt2("xl", context_length=256).context_length == 256
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        GPTConfig.gpt2("huge")


def test_logits_shape_and_attribute_names():
    model = GPTModel(SMALL)
    assert model(_ids()).shape == (2, 20, SMALL.vocab_size)
    for name in ("tok_emb", "pos_emb", "trf_blocks", "final_norm", "out_head"):
        assert hasattr(model, name)
    block = model.trf_blocks[0]
    for name in ("att", "ff", "norm1", "norm2"):
        assert hasattr(block, name)


def test_too_long_sequence_names_the_limit():
    with pytest.raises(ValueError, match="context_length is 32"):
        GPTModel(SMALL)(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad", [97, -1])
def test_token_outside_vocabulary_names_its_size(bad):
    ids = torch.zeros(1, 4, dtype=torch.long)
    ids[0, 2] = bad
    with pytest.raises(ValueError, match="vocab_size=97"):
        GPTModel(SMALL)(ids)


def test_an_empty_sequence_is_refused_by_name():
    with pytest.raises(ValueError, match=r"empty sequence of token ids, shape \(1, 0\)"):
        GPTModel(SMALL)(torch.zeros(1, 0, dtype=torch.long))


def test_missing_batch_dimension_is_explained():
    with pytest.raises(ValueError, match="unsqueeze"):
        GPTModel(SMALL)(torch.zeros(4, dtype=torch.long))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        GPTConfig(emb_dim=10, n_heads=3)


def test_attention_weights_match_transformers():
    hf = hf_model()
    ours = GPTModel(SMALL)
    load_gpt2_weights(ours, hf.state_dict())
    ids = _ids()
    weights = ours.attention_weights(ids)
    assert weights.shape == (SMALL.n_layers, 2, SMALL.n_heads, 20, 20)
    assert ours.training  # mode restored
    with torch.no_grad():
        hf.set_attn_implementation("eager")  # the fused kernels do not return weights
        ref = hf(ids, output_attentions=True).attentions
    for layer in range(SMALL.n_layers):
        torch.testing.assert_close(weights[layer], ref[layer], atol=1e-5, rtol=1e-4)


# --- the fast path's switches (chapter 36): each computes the teaching path's function -----------------


def _loss_and_grads(model, ids, targets):
    """Mean cross-entropy of ``model`` on ``ids`` and the gradient of every named parameter."""
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_switch_keeps_the_function(grad_atol: float, **switch) -> GPTModel:
    """The model with ``switch`` on gives the teaching model's loss and gradients (same weights); returns it."""
    teaching = GPTModel(SMALL).train()  # drop_rate=0: training mode is deterministic
    switched = FastGPTModel(SMALL.replace(**switch)).train()
    switched.load_state_dict(teaching.state_dict())
    ids, targets = _ids(), _ids(batch=2, tokens=20).roll(1, dims=1)
    loss_t, grads_t = _loss_and_grads(teaching, ids, targets)
    loss_s, grads_s = _loss_and_grads(switched, ids, targets)
    torch.testing.assert_close(loss_s, loss_t, atol=1e-6, rtol=1e-5)
    for name, grad in grads_t.items():
        torch.testing.assert_close(grads_s[name], grad, atol=grad_atol, rtol=1e-4, msg=name)
    return switched


def test_fast_model_with_switches_off_is_the_teaching_model_to_the_bit():
    """Same seed, same weights; same ids, the same logits and dropout draws, in training mode too."""
    cfg = SMALL.replace(drop_rate=0.2)
    torch.manual_seed(11)
    teaching = GPTModel(cfg).train()
    torch.manual_seed(11)
    fast = FastGPTModel(cfg).train()
    assert teaching.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(v, fast.state_dict()[k]) for k, v in teaching.state_dict().items())
    ids = _ids()
    torch.manual_seed(12)
    expected = teaching(ids)
    torch.manual_seed(12)
    assert torch.equal(fast(ids), expected)
    torch.manual_seed(13)  # the same for a padded, fused model's initial weights: padding rows are extra zeros
    padded = FastGPTModel(cfg.replace(vocab_pad_multiple=64, fused_layers=True))
    assert not all(torch.equal(v, padded.state_dict()[k]) for k, v in fast.state_dict().items())
    torch.manual_seed(11)
    padded = FastGPTModel(cfg.replace(vocab_pad_multiple=64, fused_layers=True))
    assert all(torch.equal(v, padded.state_dict()[k]) for k, v in teaching.state_dict().items())


def test_the_teaching_model_refuses_the_fast_switches_by_name():
    for switch in ({"fused_attention": True}, {"fused_layers": True}, {"vocab_pad_multiple": 64}):
        with pytest.raises(ValueError, match=f"{next(iter(switch))} belong to chapter 36's fast path: "
                                             f"build FastGPTModel"):
            GPTModel(SMALL.replace(**switch))
    GPTModel(SMALL.replace(tie_weights=True))  # GPT-2's own tying is part of the teaching model


def test_fused_attention_model_equals_teaching_path_forward_and_backward():
    torch.manual_seed(1)
    _assert_switch_keeps_the_function(1e-6, fused_attention=True)


def test_fused_layers_model_equals_teaching_path_forward_and_backward():
    torch.manual_seed(2)
    fused = _assert_switch_keeps_the_function(1e-5, fused_layers=True)
    assert isinstance(fused.final_norm, FusedLayerNorm)
    assert all(isinstance(b.norm1, FusedLayerNorm) and isinstance(b.ff.layers[1], FusedGELU) for b in fused.trf_blocks)


def test_tied_model_is_the_untied_model_with_a_copied_head():
    torch.manual_seed(2)
    tied = FastGPTModel(SMALL.replace(tie_weights=True))
    untied = FastGPTModel(SMALL)
    untied.load_state_dict(tied.state_dict())  # both keys hold the shared matrix
    assert torch.equal(untied.out_head.weight, untied.tok_emb.weight)
    ids, targets = _ids(), _ids(tokens=20).flip(1)
    loss_tied, grads_tied = _loss_and_grads(tied, ids, targets)
    loss_untied, grads_untied = _loss_and_grads(untied, ids, targets)
    torch.testing.assert_close(loss_tied, loss_untied)
    # The shared matrix collects the gradient of both of its uses.
    torch.testing.assert_close(grads_tied["tok_emb.weight"],
                               grads_untied["tok_emb.weight"] + grads_untied["out_head.weight"])


def test_tied_model_loads_gpt2_weights_and_matches_transformers():
    hf = hf_model(tied=True)
    ours = FastGPTModel(SMALL.replace(tie_weights=True)).eval()
    load_gpt2_weights(ours, hf.state_dict())
    ids = _ids()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_tied_model_exports_into_a_tied_transformers_model():
    torch.manual_seed(3)
    ours = FastGPTModel(SMALL.replace(tie_weights=True)).eval()
    hf = hf_model(tied=True)
    hf.load_state_dict(export_gpt2_state_dict(ours), strict=False)
    ids = _ids()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_tied_model_refuses_a_checkpoint_with_a_separate_head():
    from llm_lib.model import load_state_dict_checked

    untied = FastGPTModel(SMALL)
    with pytest.raises(ValueError, match="tie_weights=True"):
        load_state_dict_checked(FastGPTModel(SMALL.replace(tie_weights=True)), untied.state_dict())


def test_tied_checkpoint_round_trip(tmp_path):
    from llm_lib.train import load_checkpoint, save_checkpoint

    torch.manual_seed(4)
    model = FastGPTModel(SMALL.replace(tie_weights=True)).eval()
    save_checkpoint(tmp_path / "tied.safetensors", model)
    loaded = FastGPTModel(SMALL.replace(tie_weights=True)).eval()
    load_checkpoint(tmp_path / "tied.safetensors", loaded)
    assert loaded.out_head.weight is loaded.tok_emb.weight
    torch.testing.assert_close(loaded(_ids()), model(_ids()))


PADDED = SMALL.replace(vocab_pad_multiple=64)  # 97 -> 128 rows


def test_padded_vocab_size():
    assert PADDED.padded_vocab_size == 128
    assert SMALL.padded_vocab_size == SMALL.vocab_size == 97
    assert GPTConfig.gpt2("small", vocab_pad_multiple=64).padded_vocab_size == 50304
    assert GPTConfig(vocab_size=128, vocab_pad_multiple=64).padded_vocab_size == 128
    with pytest.raises(ValueError, match="vocab_pad_multiple must be at least 1"):
        GPTConfig(vocab_pad_multiple=0)


@pytest.mark.parametrize("tie", [False, True])
def test_padded_model_equals_unpadded_with_the_real_rows_copied(tie):
    torch.manual_seed(5)
    plain = GPTModel(SMALL.replace(tie_weights=tie))
    padded = FastGPTModel(PADDED.replace(tie_weights=tie))
    assert padded.tok_emb.weight.shape == padded.out_head.weight.shape == (128, SMALL.emb_dim)
    assert count_parameters(padded) == PADDED.replace(tie_weights=tie).num_parameters()
    with torch.no_grad():
        for name, p in padded.named_parameters():
            src = dict(plain.named_parameters())[name]
            p[:src.shape[0]].copy_(src)  # every tensor: the padding rows keep their values
    ids, targets = _ids(), _ids(tokens=20).roll(3, dims=1)
    assert padded(ids).shape == (2, 20, SMALL.vocab_size)  # trimmed: padding ids are never predicted
    loss_p, grads_p = _loss_and_grads(padded, ids, targets)
    loss_u, grads_u = _loss_and_grads(plain, ids, targets)
    torch.testing.assert_close(padded(ids), plain(ids))
    torch.testing.assert_close(loss_p, loss_u)
    for name, grad in grads_u.items():
        torch.testing.assert_close(grads_p[name][:grad.shape[0]], grad, msg=name)
        assert not grads_p[name][grad.shape[0]:].any()  # padding rows get no gradient


def test_padded_state_dict_holds_only_the_real_rows(tmp_path):
    from llm_lib.train import load_checkpoint, save_checkpoint

    torch.manual_seed(6)
    padded = FastGPTModel(PADDED).eval()
    sd = padded.state_dict()
    assert sd["tok_emb.weight"].shape == sd["out_head.weight"].shape == (97, SMALL.emb_dim)
    plain = GPTModel(SMALL).eval()
    plain.load_state_dict(sd)  # a padded model's checkpoint fits an unpadded model ...
    torch.testing.assert_close(plain(_ids()), padded(_ids()))
    again = FastGPTModel(PADDED).eval()
    again.load_state_dict(plain.state_dict())  # ... and the other way round
    torch.testing.assert_close(again(_ids()), padded(_ids()))
    save_checkpoint(tmp_path / "padded.safetensors", padded)
    load_checkpoint(tmp_path / "padded.safetensors", again)
    torch.testing.assert_close(again(_ids()), padded(_ids()))


def test_padded_model_loads_gpt2_weights_and_matches_transformers():
    hf = hf_model()
    ours = FastGPTModel(PADDED.replace(tie_weights=True)).eval()
    load_gpt2_weights(ours, hf.state_dict())
    ids = _ids()
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4
    exported = export_gpt2_state_dict(ours)
    assert exported["transformer.wte.weight"].shape == (97, SMALL.emb_dim)


def test_padded_model_rejects_padding_ids():
    ids = torch.full((1, 3), 100)  # a padding row, not a token
    with pytest.raises(ValueError, match="vocab_size=97"):
        FastGPTModel(PADDED)(ids)


@pytest.mark.parametrize("fused", [False, True])
def test_bf16_autocast_stays_close_to_float32(fused):
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%); measured here the logits differ
    # by ~0.3% (relative norm), the loss by ~0.005% and the gradients by ~0.4%, so the bounds allow ~3x.
    torch.manual_seed(7)
    model = FastGPTModel(SMALL.replace(fused_attention=fused, fused_layers=fused, tie_weights=True,
                                   vocab_pad_multiple=64)).train()
    ids, targets = _ids(), _ids(tokens=20).roll(5, dims=1)
    logits = model(ids)
    loss, grads = _loss_and_grads(model, ids, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_bf16 = model(ids)
        assert logits_bf16.dtype == torch.bfloat16  # the matrix products really ran in bfloat16
        loss_bf16, grads_bf16 = _loss_and_grads(model, ids, targets)

    def rel(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    assert rel(logits_bf16, logits) < 1e-2
    assert rel(loss_bf16, loss) < 1e-3
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_bf16 = torch.cat([g.flatten() for g in grads_bf16.values()])
    assert rel(flat_bf16, flat) < 2e-2
    assert all(g.dtype == torch.float32 for g in grads_bf16.values())  # weights stay float32


def test_fast_model_compiles_as_one_graph():
    # fullgraph=True fails on any graph break (e.g. reading a tensor's value in Python).
    torch._dynamo.reset()
    cfg = SMALL.replace(n_layers=1, fused_attention=True, fused_layers=True, tie_weights=True,
                        vocab_pad_multiple=64)
    model = FastGPTModel(cfg)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    ids = _ids()
    torch.testing.assert_close(compiled(ids), model(ids))
    torch._dynamo.reset()


def test_gpt2_init_gives_a_tied_model_a_sensible_first_loss():
    from llm_lib.model import init_gpt2_weights

    cfg = SMALL.replace(tie_weights=True, vocab_pad_multiple=64, n_layers=2)
    ids, targets = _ids(tokens=20), _ids(tokens=20).roll(1, dims=1)
    torch.manual_seed(9)
    model = FastGPTModel(cfg)
    default_loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    init_gpt2_weights(model)
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    assert default_loss > 2 * math.log(cfg.vocab_size)     # N(0, 1) embedding rows as the head
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.1  # nearly uniform predictions
    assert model.out_head.weight is model.tok_emb.weight
    real = model.tok_emb.weight[:cfg.vocab_size]
    assert abs(real.std().item() - 0.02) < 0.002 and not model.tok_emb.weight[cfg.vocab_size:].any()
    out_proj = model.trf_blocks[1].att.out_proj
    assert abs(out_proj.weight.std().item() - 0.02 / 2) < 0.002 and not out_proj.bias.any()
    assert torch.equal(model.final_norm.scale, torch.ones(cfg.emb_dim))


# --- the KV cache (chapter 36) -------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_kv_cache_in_chunks_equals_one_full_pass(fused):
    torch.manual_seed(8)
    model = FastGPTModel(SMALL.replace(fused_attention=fused)).eval()
    ids = _ids(batch=3, tokens=20)
    cache = model.new_kv_cache()
    with torch.no_grad():
        full = model(ids)
        # a prompt of 7, three single tokens, then a chunk of 10 after cached tokens
        chunks = [model(ids[:, a:b], kv_cache=cache) for a, b in [(0, 7), (7, 8), (8, 9), (9, 10), (10, 20)]]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_matches_transformers_past_key_values():
    hf = hf_model()
    ours = FastGPTModel(SMALL).eval()
    load_gpt2_weights(ours, hf.state_dict())
    ids = _ids(batch=2, tokens=12)
    cache = ours.new_kv_cache()
    # transformers 5.x renames past_key_values to cache (announced for 5.40): use what this version has.
    name = "cache" if "cache" in inspect.signature(type(hf).forward).parameters else "past_key_values"
    with torch.no_grad():
        out = hf(ids[:, :9], use_cache=True)
        past = getattr(out, name)
        torch.testing.assert_close(ours(ids[:, :9], kv_cache=cache), out.logits, atol=1e-4, rtol=1e-4)
        for t in range(9, 12):
            step = hf(ids[:, t:t + 1], use_cache=True, **{name: past})
            past = getattr(step, name)
            torch.testing.assert_close(ours(ids[:, t:t + 1], kv_cache=cache), step.logits,
                                       atol=1e-4, rtol=1e-4)


def test_kv_cache_overflow_names_the_limit():
    model = FastGPTModel(SMALL).eval()
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="KV cache holds 30 tokens .* context_length of 32"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
        small = model.new_kv_cache(max_tokens=4)
        with pytest.raises(ValueError, match="max_tokens=4"):
            model(torch.zeros(1, 5, dtype=torch.long), kv_cache=small)
    with pytest.raises(ValueError, match="context_length=32"):
        model.new_kv_cache(max_tokens=33)


def test_kv_cache_must_fit_the_model():
    model = FastGPTModel(SMALL).eval()
    with pytest.raises(ValueError, match="n_layers=3"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=FastGPTModel(SMALL.replace(n_layers=2)).new_kv_cache())
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(torch.zeros(2, 2, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="one cache per batch"):
            model(torch.zeros(3, 1, dtype=torch.long), kv_cache=cache)


def test_logits_at_chosen_positions_equal_the_full_forward_sliced():
    torch.manual_seed(3)
    model = FastGPTModel(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (3, 7))
    full = model(ids)
    torch.testing.assert_close(model(ids, positions=-1), full[:, -1])
    torch.testing.assert_close(model(ids, positions=2), full[:, 2])
    last = torch.tensor([6, 0, 3])
    torch.testing.assert_close(model(ids, positions=last), full[torch.arange(3), last])
    mask = torch.rand(3, 7) > 0.5
    torch.testing.assert_close(model(ids, positions=mask), full[mask])


@pytest.mark.parametrize("positions, message", [
    (7, "position 7 is outside a sequence of 7 tokens"),
    (torch.tensor([0, 7, 1]), "outside a sequence of 7 tokens"),
    (torch.tensor([0, 1]), "one integer position per row"),
    (torch.tensor([0.0, 1.0, 2.0]), "one integer position per row"),
    (torch.ones(3, 6, dtype=torch.bool), "must have the ids' shape"),
])
def test_bad_positions_are_named(positions, message):
    with pytest.raises(ValueError, match=message):
        FastGPTModel(SMALL)(torch.zeros(3, 7, dtype=torch.long), positions=positions)


def test_logits_at_serves_our_models_and_any_other():
    from llm_lib.model import logits_at

    torch.manual_seed(4)
    model = FastGPTModel(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (2, 5))
    rows = []  # our model runs its head at the chosen positions only
    hook = model.out_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:-1].numel()))
    torch.testing.assert_close(logits_at(model, ids, -1), model(ids)[:, -1])
    hook.remove()
    assert rows == [2, 2 * 5]

    def toy(idx):  # a model written in a chapter: ids -> logits, no positions argument
        return model(idx)

    torch.testing.assert_close(logits_at(toy, ids, torch.tensor([1, 3])), model(ids)[torch.arange(2), [1, 3]])
