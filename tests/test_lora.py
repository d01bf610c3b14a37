"""LoRA written out (llm_lib.finetune.lora) against Hugging Face peft with the same matrices,
and merged weights against the unmerged adapters, on a tiny GPT-2 and a tiny Llama."""

import copy

import pytest
import torch
from torch import nn

from llm_lib.finetune import LoRALinear, add_lora, lora_state_dict, merge_lora
from llm_lib.llama import LlamaConfig, LlamaModel
from llm_lib.model import GPTConfig, GPTModel, load_state_dict_checked

GPT_TINY = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                     drop_rate=0.0, qkv_bias=True)
LLAMA_TINY = LlamaConfig(vocab_size=89, context_length=32, emb_dim=48, n_heads=6, n_kv_heads=2,
                         n_layers=2, hidden_dim=64, rope_base=500.0, tie_weights=True)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPTModel(GPT_TINY).eval()


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaModel(LLAMA_TINY).eval()


def ids_for(cfg, seed=1, shape=(3, 9)):
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomise_B(model, seed=2):
    """B starts at zero; give it values so the update is not trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.B.copy_(torch.randn(m.B.shape, generator=gen) * 0.3)


def test_a_fresh_adapter_changes_nothing():
    model = tiny_gpt()
    ids = ids_for(GPT_TINY)
    with torch.no_grad():
        before = model(ids)
    add_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(model(ids), before)


@pytest.mark.parametrize("builder, cfg, targets", [
    (tiny_gpt, GPT_TINY, ("W_query", "W_value")),
    (tiny_gpt, GPT_TINY, ("W_query", "W_key", "W_value", "out_proj")),
    (tiny_llama, LLAMA_TINY, ("W_query", "W_value", "gate", "up", "down")),
])
def test_merged_weights_give_the_outputs_of_the_unmerged_adapters(builder, cfg, targets):
    model = builder()
    names = add_lora(model, rank=4, alpha=16, targets=targets)
    assert len(names) == cfg.n_layers * len(targets)
    randomise_B(model)
    ids = ids_for(cfg)
    with torch.no_grad():
        unmerged = model(ids)
        assert not torch.allclose(unmerged, builder()(ids), atol=1e-3), "the update must matter"
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), unmerged, atol=1e-5, rtol=1e-5)
    # A plain model of the same configuration loads the merged weights, under the pretrained names.
    plain = builder(seed=9)
    load_state_dict_checked(plain, model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids), unmerged, atol=1e-5, rtol=1e-5)


def test_only_the_adapters_train_and_their_count_is_rank_times_in_plus_out():
    model = tiny_gpt()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=3, alpha=6)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".A", ".B")) for name in trainable)
    d = GPT_TINY.emb_dim
    assert sum(p.numel() for p in trainable.values()) == GPT_TINY.n_layers * 2 * 3 * (d + d)
    assert set(lora_state_dict(model)) == set(trainable)

    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    ids = ids_for(GPT_TINY, shape=(4, 12))
    losses = []
    model.train()
    for _ in range(30):
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    state = {k: v for k, v in model.state_dict().items() if not k.endswith((".A", ".B"))}
    for key, value in state.items():  # the pretrained weights, under the adapters' .base
        assert torch.equal(value, frozen[key.replace(".base.", ".")]), key


peft = pytest.importorskip("peft")


def peft_twin(model, ours, targets, rank, alpha):
    """peft's LoRA on a copy of the pretrained ``model``, with our A and B copied in."""
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(targets))
    twin = peft.inject_adapter_in_model(config, copy.deepcopy(model))
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                theirs = twin.get_submodule(name)
                theirs.lora_A["default"].weight.copy_(module.A)
                theirs.lora_B["default"].weight.copy_(module.B)
    return twin


@pytest.mark.parametrize("builder, cfg, targets", [
    (tiny_gpt, GPT_TINY, ("W_query", "W_value")),
    (tiny_llama, LLAMA_TINY, ("W_query", "W_key", "W_value", "out_proj")),
])
def test_lora_matches_peft_in_outputs_gradients_and_merged_weights(builder, cfg, targets):
    pretrained = builder()
    ours = copy.deepcopy(pretrained)
    add_lora(ours, rank=4, alpha=12, targets=targets)
    randomise_B(ours)
    theirs = peft_twin(pretrained, ours, targets, rank=4, alpha=12)
    ids = ids_for(cfg)

    ours_trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    theirs_trainable = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert ours_trainable == theirs_trainable

    out_ours, out_theirs = ours(ids), theirs(ids)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    (out_ours ** 2).mean().backward()
    (out_theirs ** 2).mean().backward()
    for name, module in ours.named_modules():
        if isinstance(module, LoRALinear):
            twin = theirs.get_submodule(name)
            torch.testing.assert_close(module.A.grad, twin.lora_A["default"].weight.grad)
            torch.testing.assert_close(module.B.grad, twin.lora_B["default"].weight.grad)

    merged_ours = merge_lora(ours).state_dict()
    for name in merged_ours:
        if name.endswith("weight") and name.rsplit(".", 2)[-2] in targets:
            layer = theirs.get_submodule(name.rpartition(".")[0])
            expected = layer.base_layer.weight + layer.get_delta_weight("default")
            torch.testing.assert_close(merged_ours[name], expected, atol=1e-6, rtol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 32\]"):
        add_lora(tiny_gpt(), rank=0)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 32\]"):
        add_lora(tiny_gpt(), rank=33)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        add_lora(tiny_gpt(), rank=2, alpha=0)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        add_lora(tiny_gpt(), rank=2, dropout=1.0)
    with pytest.raises(ValueError, match=r"no nn.Linear named \['q_proj'\].*'W_query'"):
        add_lora(tiny_gpt(), targets="q_proj")
    with pytest.raises(TypeError, match="LoRA adapts an nn.Linear, got LayerNorm"):
        LoRALinear(nn.LayerNorm(4), rank=1, alpha=1)
    model = tiny_gpt()
    add_lora(model, rank=2)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, rank=2)


def test_a_tied_output_head_is_refused():
    with pytest.raises(ValueError, match="out_head's weight is tied"):
        add_lora(tiny_llama(), rank=2, targets=("out_head",))
