"""GPTModel against Hugging Face transformers' GPT-2, and its parameter counts."""

import pytest
import torch

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
