"""Instruction finetuning (chapter 34): prompt format, collate masking, batching by length, training, responses."""

import json
import math
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_lib.fast import FastGPTModel
from llm_lib.finetune import (
    IGNORE_INDEX,
    PROMPT_HEADER,
    InstructionDataset,
    InstructionRecipe,
    LengthGroupedBatchSampler,
    format_input,
    generate_response,
    generate_responses,
    instruct_recipe,
    instruction_collate,
    instruction_loss_batch,
    instruction_loss_loader,
    last_token_logits,
    load_instruction_data,
    load_or_finetune,
    load_or_generate_responses,
    load_responses,
    responses_path,
    save_responses,
    train_instruction_model,
)
from llm_lib.generate import generate
from llm_lib.history import TrainingHistory
from llm_lib.model import GPTConfig, GPTModel
from llm_lib.tokenizer import get_gpt2_encoding
from llm_lib.train import calc_loss_batch, checkpoint_path

PAD, X = 50256, IGNORE_INDEX
TINY = GPTConfig(context_length=64, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0, tie_weights=True)
TINY_RECIPE = InstructionRecipe(cfg=TINY, batch_size=8, num_epochs=2, eval_every=4, lr=5e-3)


@pytest.fixture
def small_splits(monkeypatch):
    """Recipes train on 48 entries, validate on 8 and test on 5, so the runs take a second or two."""
    train, val, test = InstructionRecipe().splits()
    monkeypatch.setattr(InstructionRecipe, "splits", lambda self: (train[:48], val[:8], test[:5]))


# ---------------------------------------------------------------- prompt format and data


def test_format_input_with_and_without_input():
    with_input = {"instruction": "Reverse the word.", "input": "stone", "output": "enots"}
    assert format_input(with_input) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nReverse the word.\n\n### Input:\nstone\n\n### Response:\n")
    without = {"instruction": "Name a prime number.", "input": "", "output": "7"}
    assert format_input(without) == f"{PROMPT_HEADER}\n\n### Instruction:\nName a prime number.\n\n### Response:\n"
    assert format_input({"instruction": "Name a prime number."}) == format_input(without)
    with pytest.raises(KeyError, match="instruction"):
        format_input({"input": "x"})


def test_instruction_data_has_1100_entries_and_an_85_5_10_split():
    data = load_instruction_data()
    assert len(data) == 1100 and set(data[0]) == {"instruction", "input", "output"}
    train, val, test = InstructionRecipe().splits()
    assert (len(train), len(val), len(test)) == (935, 55, 110)


def test_dataset_is_prompt_ids_then_response_ids():
    tok = get_gpt2_encoding()
    entries = [{"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
               {"instruction": "Say hello.", "input": "", "output": "Hello!"}]
    ds = InstructionDataset(entries, tok)
    for i, entry in enumerate(entries):
        ids, prompt_length = ds[i]
        prompt = tok.encode(format_input(entry))
        assert prompt_length == len(prompt) and ids == prompt + tok.encode(entry["output"])
        assert ids == tok.encode(format_input(entry) + entry["output"])  # the prompt's final newline splits cleanly
        assert ds.lengths[i] == len(ids)
    with pytest.raises(ValueError, match="at least one"):
        InstructionDataset([], tok)


# ---------------------------------------------------------------- the collate function

BATCH = [([1, 2, 3, 4, 5], 2), ([6, 7], 1), ([8, 9, 10], 3)]


def test_collate_pads_shifts_and_keeps_one_end_of_text_target():
    inputs, targets = instruction_collate(BATCH)
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.tolist() == [[1, 2, 3, 4, 5],
                               [6, 7, PAD, PAD, PAD],
                               [8, 9, 10, PAD, PAD]]
    assert targets.tolist() == [[2, 3, 4, 5, PAD],
                                [7, PAD, X, X, X],
                                [9, 10, PAD, X, X]]


def test_collate_masks_the_prompt():
    _, targets = instruction_collate(BATCH, mask_prompt=True)
    # row 0: prompt [1, 2], so the target 2 (a prompt token) is masked; row 1: prompt [6] masks nothing;
    # row 2 is all prompt: only the end-of-text target is left
    assert targets.tolist() == [[X, 3, 4, 5, PAD],
                                [7, PAD, X, X, X],
                                [X, X, PAD, X, X]]


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = instruction_collate(BATCH, mask_prompt=True, allowed_max_length=3)
    assert inputs.tolist() == [[1, 2, 3], [6, 7, PAD], [8, 9, 10]]
    assert targets.tolist() == [[X, 3, 4], [7, PAD, X], [X, X, PAD]]


def test_collate_other_pad_and_ignore_values():
    inputs, targets = instruction_collate([([5], 0), ([1, 2], 0)], pad_token_id=0, ignore_index=-1)
    assert inputs.tolist() == [[5, 0], [1, 2]] and targets.tolist() == [[0, -1], [2, 0]]


def test_collate_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty batch"):
        instruction_collate([])
    with pytest.raises(ValueError, match="no tokens"):
        instruction_collate([([], 0)])
    with pytest.raises(ValueError, match="prompt_length=4"):
        instruction_collate([([1, 2], 4)])
    with pytest.raises(ValueError, match="allowed_max_length"):
        instruction_collate(BATCH, allowed_max_length=0)


def test_masked_targets_do_not_count_in_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    _, targets = instruction_collate([([1, 2, 3, 4, 5], 2), ([6, 7], 1), ([8, 9, 10], 3)], pad_token_id=0)
    keep = targets != X
    by_hand = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(F.cross_entropy(logits.flatten(0, 1), targets.flatten()), by_hand)


# ---------------------------------------------------------------- batching by length


def test_length_grouped_batches_cover_every_index_once_and_are_reproducible():
    lengths = [7, 3, 9, 1, 4, 4, 8, 2, 6, 5, 10]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=3, seed=1)
    first, second = list(sampler), list(sampler)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert len(batches) == len(sampler) == 4
    assert first != second  # each pass is shuffled anew
    again = LengthGroupedBatchSampler(lengths, batch_size=3, seed=1)
    assert list(again) == first and list(again) == second
    # one pool: the batches hold consecutive lengths of the sorted list
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in first)
    assert all(hi < next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:], strict=False))


def test_length_grouped_without_shuffle_runs_shortest_first_and_drop_last():
    lengths = [7, 3, 9, 1, 4]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=2, shuffle=False)
    assert list(sampler) == [[3, 1], [4, 0], [2]]
    assert list(LengthGroupedBatchSampler(lengths, 2, shuffle=False, drop_last=True)) == [[3, 1], [4, 0]]
    pools = LengthGroupedBatchSampler(lengths, batch_size=2, seed=0, pool_size=2)
    assert sorted(i for b in pools for i in b) == list(range(5))
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler(lengths, 0)
    with pytest.raises(ValueError, match="pool_size=1"):
        LengthGroupedBatchSampler(lengths, 2, pool_size=1)


def test_grouping_by_length_pads_less_than_random_batches():
    lengths = InstructionDataset(InstructionRecipe().splits()[0], get_gpt2_encoding()).lengths
    grouped = LengthGroupedBatchSampler(lengths, 8, seed=0).batches()
    random_batches = LengthGroupedBatchSampler(lengths, 8, seed=0, pool_size=8).batches()

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(random_batches) / 5


# ---------------------------------------------------------------- loss, training, generation


def test_instruction_loss_equals_calc_loss_batch():
    torch.manual_seed(1)
    model = FastGPTModel(TINY.replace(drop_rate=0.0)).eval()
    inputs, targets = instruction_collate(BATCH, mask_prompt=True)
    loss = instruction_loss_batch(inputs, targets, model)
    torch.testing.assert_close(loss, calc_loss_batch(inputs, targets, model))

    rows = []  # the output head runs only at the counted targets
    hook = model.out_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    instruction_loss_batch(inputs, targets, model)
    hook.remove()
    assert rows == [int((targets != X).sum())] and rows[0] < targets.numel()
    with pytest.raises(ValueError, match="every target"):
        instruction_loss_batch(inputs, torch.full_like(targets, X), model)


def test_last_token_logits_match_the_full_forward():
    torch.manual_seed(2)
    model = GPTModel(TINY).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 9))
    torch.testing.assert_close(last_token_logits(model, idx), model(idx)[:, -1, :])


def test_training_lowers_the_loss_and_records_history(small_splits):
    torch.manual_seed(3)
    train_loader, val_loader = TINY_RECIPE.loaders()
    model = TINY_RECIPE.build_model()
    before = instruction_loss_loader(val_loader, model)
    assert abs(before - torch.log(torch.tensor(50257.0)).item()) < 0.3  # a fresh model guesses uniformly
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    history = train_instruction_model(model, train_loader, val_loader, opt, num_epochs=3, eval_every=5,
                                      progress=False, verbose=False)
    assert history.steps == [0, 5, 10, 15, 18] and history.epochs[-1] == 3.0
    assert history.val_losses[0] == pytest.approx(before) and math.isnan(history.train_losses[0])
    assert history.val_losses[-1] < before - 1.0
    assert history.seen == sorted(history.seen) and len(history.step_losses) == 18


class ScriptedModel(nn.Module):
    """Its greedy continuation of any prompt is ``script`` (then end-of-text)."""

    def __init__(self, prompt_length, script, vocab=50257):
        super().__init__()
        self.cfg = GPTConfig(vocab_size=vocab, context_length=256)
        self.prompt_length, self.script, self.vocab = prompt_length, script, vocab

    def forward(self, idx):
        step = idx.shape[1] - self.prompt_length
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.vocab)
        logits[:, -1, self.script[step] if step < len(self.script) else PAD] = 1.0
        return logits


def test_generate_response_stops_at_end_of_text_and_strips_the_prompt():
    tok = get_gpt2_encoding()
    entry = {"instruction": "Greet me.", "input": ""}
    prompt_length = len(tok.encode(format_input(entry)))
    answer = tok.encode(" Hello there.")
    model = ScriptedModel(prompt_length, answer + [PAD] + tok.encode(" never"))
    assert generate_response(model, tok, entry) == "Hello there."
    assert generate_response(model, tok, entry, max_new_tokens=1) == "Hello"
    out = generate_responses(model, tok, [entry, {**entry, "output": "Hi."}], progress=False)
    assert out == [{**entry, "model_response": "Hello there."},
                   {**entry, "output": "Hi.", "model_response": "Hello there."}]
    assert "model_response" not in entry  # copies, not the caller's dicts


def test_generate_response_matches_greedy_generate():
    tok = get_gpt2_encoding()
    torch.manual_seed(4)
    model = GPTModel(TINY).eval()
    entry = {"instruction": "Name a colour.", "input": ""}
    idx = torch.tensor([tok.encode(format_input(entry))])
    reference = generate(model, idx, 6, TINY.context_length, temperature=0.0, eos_id=PAD)
    assert generate_response(model, tok, entry, max_new_tokens=6) == tok.decode(
        reference[0, idx.shape[1]:].tolist()).strip()


def test_save_and_load_responses(tmp_path):
    entries = [{"instruction": "Translate 'thank you' to German.", "input": "", "output": "Danke.",
                "model_response": "Danke schön."}]
    path = save_responses(entries, tmp_path / "sub" / "responses.json")
    assert load_responses(path) == entries
    assert "schön" in path.read_text(encoding="utf-8") and json.loads(path.read_text())[0]["output"] == "Danke."


# ---------------------------------------------------------------- the recipe and its cache


def test_recipe_key_and_validation():
    # chapter 34 prints this key and readers' caches hold the finetuned weights under it: change it only on
    # purpose (a new TRAINING_CODE_VERSION changes it, as it should)
    assert InstructionRecipe().key() == "c2433cad0378"
    assert InstructionRecipe(mask_prompt=False).key() != InstructionRecipe().key()
    medium = InstructionRecipe.gpt2("medium")
    assert (medium.cfg.emb_dim, medium.cfg.n_layers, medium.cfg.qkv_bias, medium.base) == (1024, 24, True, "medium")
    with pytest.raises(ValueError, match="GPT-2 size"):
        InstructionRecipe(base="huge")
    with pytest.raises(ValueError, match="InstructionRecipe.gpt2"):
        InstructionRecipe(base="small")
    with pytest.raises(ValueError, match="allowed_max_length"):
        InstructionRecipe(allowed_max_length=1000)


def test_recipe_loaders_give_masked_length_grouped_batches():
    train_loader, val_loader = TINY_RECIPE.replace(batch_size=8).loaders()
    assert len(train_loader) == 117 and len(val_loader) == 7
    inputs, targets = next(iter(val_loader))
    assert inputs.shape == targets.shape and inputs.shape[0] == 8
    assert (targets[:, :30] == X).all()  # the 30-odd-token header is prompt: masked


def test_load_or_finetune_trains_once_then_loads(tmp_path, monkeypatch, small_splits):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    model, history = load_or_finetune(TINY_RECIPE, progress=False)
    assert checkpoint_path(TINY_RECIPE).exists() and not model.training
    assert history.val_losses[-1] < history.val_losses[0]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(instruct_recipe, "finetune", no_training)
    again, history_again = load_or_finetune(TINY_RECIPE)
    ids = torch.randint(0, TINY.vocab_size, (1, 8))
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)
    assert history_again == history

    responses = load_or_generate_responses(TINY_RECIPE, max_new_tokens=3, progress=False)
    assert len(responses) == 5 and all(isinstance(r["model_response"], str) for r in responses)
    assert responses_path(TINY_RECIPE, 3).exists() and not responses_path(TINY_RECIPE).exists()
    monkeypatch.setattr(instruct_recipe, "generate_responses", no_training)
    assert load_or_generate_responses(TINY_RECIPE, max_new_tokens=3) == responses


def test_parallel_callers_share_one_finetuning_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    calls = []

    def slow_finetune(recipe, device="cpu", progress=True, verbose=True):
        calls.append(recipe.key())
        time.sleep(0.5)
        history = TrainingHistory()
        history.record(step=0, epoch=0.0, seen=0, train_loss=math.nan, val_loss=1.0)
        return GPTModel(recipe.cfg), history

    monkeypatch.setattr(instruct_recipe, "finetune", slow_finetune)
    threads = [threading.Thread(target=load_or_finetune, args=(TINY_RECIPE,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_verbose_and_retrain(tmp_path, monkeypatch, capsys, small_splits):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    recipe = TINY_RECIPE.replace(num_epochs=1)
    load_or_finetune(recipe, progress=False, verbose=True)
    assert "train loss" in capsys.readouterr().out
    load_or_finetune(recipe, progress=False, verbose=True)
    assert "loaded the trained weights" in capsys.readouterr().out
    load_or_finetune(recipe, progress=False, verbose=True, retrain=True)
    assert "train loss" in capsys.readouterr().out
