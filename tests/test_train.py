"""Loss, the training loop and checkpoints."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llm_lib import train as train_module
from llm_lib.data import create_dataloader
from llm_lib.data_sources import load_text
from llm_lib.model import GPTConfig, GPTModel
from llm_lib.tokenizer import get_gpt2_encoding
from llm_lib.train import (
    PretrainRecipe,
    calc_loss_batch,
    calc_loss_loader,
    checkpoint_path,
    evaluate_model,
    load_checkpoint,
    load_or_pretrain,
    plot_losses,
    save_checkpoint,
    train_model_simple,
)

TINY = GPTConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.1)


def loaders():
    text = load_text("the-verdict.txt")
    split = int(0.9 * len(text))
    kw = dict(batch_size=4, max_length=32, stride=32, tokenizer=get_gpt2_encoding())
    train = create_dataloader(text[:split], shuffle=True, drop_last=True, seed=0, **kw)
    val = create_dataloader(text[split:], shuffle=False, drop_last=False, **kw)
    return train, val


def test_calc_loss_batch_is_cross_entropy_by_hand():
    model = GPTModel(TINY).eval()
    inputs = torch.randint(0, TINY.vocab_size, (2, 6))
    targets = torch.randint(0, TINY.vocab_size, (2, 6))
    log_probs = torch.log_softmax(model(inputs), dim=-1)
    by_hand = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    loss = calc_loss_batch(inputs, targets, model)
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(loss, F.cross_entropy(model(inputs).transpose(1, 2), targets))


def test_untrained_loss_is_near_log_vocab():
    torch.manual_seed(0)
    train, val = loaders()
    train_loss, val_loss = evaluate_model(GPTModel(TINY), train, val, eval_iter=3)
    assert abs(val_loss - torch.log(torch.tensor(50257.0)).item()) < 0.6


def run_training(steps_epochs=1):
    torch.manual_seed(123)
    train, val = loaders()
    model = GPTModel(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    losses = train_model_simple(model, train, val, opt, "cpu", num_epochs=steps_epochs,
                                eval_freq=5, eval_iter=2, progress=False)
    return model, opt, losses


def test_training_lowers_the_loss_and_is_reproducible(capsys):
    _, _, (train_losses, val_losses, tokens) = run_training()
    assert train_losses[-1] < train_losses[0] - 1.0
    assert tokens == sorted(tokens) and tokens[0] == 4 * 32
    assert "train loss" in capsys.readouterr().out
    _, _, again = run_training()
    assert again == (train_losses, val_losses, tokens)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    torch.manual_seed(3)
    model = GPTModel(TINY.replace(tie_weights=True)).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randint(0, TINY.vocab_size, (2, 8))
    calc_loss_batch(inputs, inputs, model).backward()
    opt.step()
    path = tmp_path / f"ckpt{suffix}"
    with_opt = opt if suffix == ".pt" else None
    save_checkpoint(path, model, with_opt, metadata={"seed": 3, "config": "tiny"})

    restored = GPTModel(TINY.replace(tie_weights=True)).eval()
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    meta = load_checkpoint(path, restored, opt2 if with_opt else None)
    assert meta == {"seed": 3, "config": "tiny"}
    torch.testing.assert_close(restored(inputs), model(inputs), rtol=0, atol=0)
    if with_opt:
        for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values(), strict=True):
            torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)
            torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)


def test_checkpoint_from_other_config_names_the_parameter(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", GPTModel(TINY))
    with pytest.raises(ValueError, match="pos_emb.weight"):
        load_checkpoint(path, GPTModel(TINY.replace(context_length=16)))
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(path, GPTModel(TINY.replace(n_layers=3)))


def test_safetensors_refuses_optimizer_state(tmp_path):
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match="weights only"):
        save_checkpoint(tmp_path / "m.safetensors", model, torch.optim.SGD(model.parameters(), 0.1))


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        calc_loss_loader([], GPTModel(TINY))


def test_plot_losses_draws_both_curves_against_epochs_and_tokens():
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_losses([0, 1, 2], [100, 200, 300], [3.0, 2.0, 1.5], [3.1, 2.6, 2.5])
    ax, top = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["training loss", "validation loss"]
    assert list(ax.get_lines()[1].get_ydata()) == [3.1, 2.6, 2.5]
    assert top.get_xlabel() == "tokens seen" and ax.get_xlabel() == "epochs"


TINY_RECIPE = PretrainRecipe(cfg=TINY, num_epochs=1, batch_size=4, eval_freq=10, eval_iter=1)


def test_recipe_key_depends_on_config_and_seed():
    assert TINY_RECIPE.key() == PretrainRecipe(cfg=TINY, num_epochs=1, batch_size=4, eval_freq=10,
                                               eval_iter=1).key()
    assert TINY_RECIPE.key() != dataclasses.replace(TINY_RECIPE, seed=7).key()
    assert TINY_RECIPE.key() != dataclasses.replace(TINY_RECIPE, cfg=TINY.replace(n_layers=3)).key()
    assert checkpoint_path(TINY_RECIPE) != checkpoint_path(dataclasses.replace(TINY_RECIPE, seed=7))


def test_chapter_28_recipe_key_is_stable():
    # Readers' caches hold weights under this key; a new GPTConfig option at its default must not change it.
    assert PretrainRecipe().key() == "56575223c500"
    assert PretrainRecipe(cfg=PretrainRecipe().cfg.replace(tie_weights=True)).key() != "56575223c500"


def test_load_or_pretrain_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    model, history = load_or_pretrain(TINY_RECIPE, progress=False)
    assert checkpoint_path(TINY_RECIPE).exists()
    assert history["train_losses"][-1] < history["train_losses"][0]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(train_module, "pretrain", no_training)
    again, history_again = load_or_pretrain(TINY_RECIPE)
    ids = torch.randint(0, TINY.vocab_size, (1, 8))
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)
    assert history_again == history


def test_parallel_callers_share_one_training_run(tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    calls = []

    def slow_pretrain(recipe, device="cpu", progress=True, verbose=True):
        calls.append(recipe.key())
        time.sleep(0.5)
        torch.manual_seed(recipe.seed)
        return GPTModel(recipe.cfg), {"train_losses": [1.0], "val_losses": [1.0], "tokens_seen": [1]}

    monkeypatch.setattr(train_module, "pretrain", slow_pretrain)
    threads = [threading.Thread(target=load_or_pretrain, args=(TINY_RECIPE,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_verbose_run_prints_the_log_and_retrain_trains_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    load_or_pretrain(TINY_RECIPE, progress=False, verbose=True)
    assert "train loss" in capsys.readouterr().out
    load_or_pretrain(TINY_RECIPE, progress=False, verbose=True)
    assert "loaded the trained weights" in capsys.readouterr().out
    load_or_pretrain(TINY_RECIPE, progress=False, verbose=True, retrain=True)
    assert "train loss" in capsys.readouterr().out
