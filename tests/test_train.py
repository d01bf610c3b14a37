"""Loss, the training loop and checkpoints."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llm_lib import checkpoints, pretraining
from llm_lib.data import create_dataloader
from llm_lib.data_sources import load_text
from llm_lib.history import TrainingHistory
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
    train_loss, val_loss = evaluate_model(GPTModel(TINY), train, val, num_batches=3)
    assert abs(val_loss - torch.log(torch.tensor(50257.0)).item()) < 0.6


def run_training(steps_epochs=1):
    torch.manual_seed(123)
    train, val = loaders()
    model = GPTModel(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    history = train_model_simple(model, train, val, opt, num_epochs=steps_epochs,
                                 eval_every=5, eval_batches=2, progress=False)
    return model, opt, history


def test_training_lowers_the_loss_and_is_reproducible(capsys):
    train, _ = loaders()
    _, _, history = run_training()
    assert history.train_losses[-1] < history.train_losses[0] - 1.0
    # evaluations after step 1, then every 5 steps: 1, 6, 11, ...
    assert history.steps == list(range(1, len(train) + 1, 5))
    assert history.seen == [s * 4 * 32 for s in history.steps]
    assert history.epochs == [s / len(train) for s in history.steps]
    assert len(history.step_losses) == len(train) and history.metrics == {}
    log = capsys.readouterr().out
    assert log.count("train loss") == len(history)
    assert f"step  1/{len(train)} | epoch 0.0" in log
    _, _, again = run_training()
    assert again == history


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
    history = TrainingHistory()
    for step, (train, val) in enumerate([(3.0, 3.1), (2.0, 2.6), (1.5, 2.5)], start=1):
        history.record(step=step, epoch=step / 2, seen=100 * step, train_loss=train, val_loss=val)
    fig = plot_losses(history)
    (ax,) = fig.axes
    (top,) = ax.child_axes   # secondary_xaxis: a second scale of the same axis
    assert [line.get_label() for line in ax.get_lines()] == ["training loss", "validation loss"]
    assert list(ax.get_lines()[1].get_ydata()) == [3.1, 2.6, 2.5]
    assert top.get_xlabel() == "tokens seen" and ax.get_xlabel() == "epochs"
    assert len(top.get_lines()) == 0   # no hidden curve
    to_seen, to_epochs = top._functions
    assert to_seen(1.0) == pytest.approx(200) and to_seen(2.0) == pytest.approx(400)  # past the end
    assert to_epochs(300) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no evaluations"):
        plot_losses(TrainingHistory())


TINY_RECIPE = PretrainRecipe(cfg=TINY, num_epochs=1, batch_size=4, eval_every=10, eval_batches=1)


def test_recipe_key_depends_on_config_and_seed():
    assert TINY_RECIPE.key() == PretrainRecipe(cfg=TINY, num_epochs=1, batch_size=4, eval_every=10,
                                               eval_batches=1).key()
    assert TINY_RECIPE.key() != dataclasses.replace(TINY_RECIPE, seed=7).key()
    assert TINY_RECIPE.key() != dataclasses.replace(TINY_RECIPE, cfg=TINY.replace(n_layers=3)).key()
    assert checkpoint_path(TINY_RECIPE) != checkpoint_path(dataclasses.replace(TINY_RECIPE, seed=7))


def test_chapter_28_recipe_key_is_stable(monkeypatch):
    # Readers' caches hold weights under this key (chapter 28 prints it); a new GPTConfig option at its
    # default must not change it, and a new version of the training code must.
    assert PretrainRecipe().key() == "b29033371480"
    assert PretrainRecipe(cfg=PretrainRecipe().cfg.replace(tie_weights=True)).key() != "b29033371480"
    monkeypatch.setattr(checkpoints, "TRAINING_CODE_VERSION", checkpoints.TRAINING_CODE_VERSION + 1)
    assert PretrainRecipe().key() != "b29033371480"


def test_load_or_pretrain_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LIB_CHECKPOINT_DIR", str(tmp_path))
    model, history = load_or_pretrain(TINY_RECIPE, progress=False)
    assert checkpoint_path(TINY_RECIPE).exists()
    assert history.train_losses[-1] < history.train_losses[0]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(pretraining, "pretrain", no_training)
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
        history = TrainingHistory()
        history.record(step=1, epoch=1.0, seen=1, train_loss=1.0, val_loss=1.0)
        return GPTModel(recipe.cfg), history

    monkeypatch.setattr(pretraining, "pretrain", slow_pretrain)
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


# ----------------------------------------------------------------------------------
# The fast path (chapter 36): every switch against the teaching path
# ----------------------------------------------------------------------------------

from llm_lib.train import (  # noqa: E402
    TrainOptions,
    autocast_context,
    default_autocast_dtype,
    destroy_distributed,
    distributed_dataloader,
    init_distributed,
    make_optimizer,
    train_model,
    train_step,
    unwrap_model,
    weights_digest,
)

SMALL = GPTConfig(vocab_size=500, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0)


def small_batch(seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, SMALL.vocab_size, (batch, 16), generator=g),
            torch.randint(0, SMALL.vocab_size, (batch, 16), generator=g))


def sgd_update(model, options=None, step_model=None):
    """Loss and the change of every weight after one SGD step with lr=1, i.e. minus the gradient."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model if step_model is None else step_model, opt, *small_batch(), options=options)
    return loss, torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])


def fresh_small(seed=0):
    torch.manual_seed(seed)
    return GPTModel(SMALL)


def test_train_model_with_default_options_is_train_model_simple(capsys):
    text = load_text("the-verdict.txt")[:3000]
    kw = dict(batch_size=2, max_length=32, stride=32, tokenizer=get_gpt2_encoding())
    runs = []
    for loop in (train_model_simple, train_model):
        torch.manual_seed(123)
        train = create_dataloader(text[:2500], shuffle=True, drop_last=True, seed=0, **kw)
        val = create_dataloader(text[2500:], shuffle=False, drop_last=False, **kw)
        model = GPTModel(TINY)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        history = loop(model, train, val, opt, num_epochs=2, eval_every=3, eval_batches=2, progress=False)
        runs.append((history, weights_digest(model), capsys.readouterr().out))
    assert runs[0] == runs[1]
    assert runs[0][2].count("train loss") >= 3


def test_bf16_autocast_step_is_close_to_float32():
    loss32, grad32 = sgd_update(fresh_small())
    loss16, grad16 = sgd_update(fresh_small(), TrainOptions(autocast_dtype=torch.bfloat16))
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 ~ 0.002): losses agree to a few 1e-3,
    # gradients point the same way to within about 1% of their norm.
    assert abs(loss16 - loss32) < 5e-3 * loss32
    assert ((grad16 - grad32).norm() / grad32.norm()).item() < 0.02
    assert F.cosine_similarity(grad16, grad32, dim=0).item() > 0.999


def test_float16_autocast_with_gradient_scaler_is_close_to_float32():
    model = fresh_small()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in model.parameters()]
    loss16 = train_step(model, opt, *small_batch(), options=TrainOptions(autocast_dtype=torch.float16),
                        scaler=scaler)
    grad16 = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
    loss32, grad32 = sgd_update(fresh_small())
    assert abs(loss16 - loss32) < 5e-3 * loss32
    assert ((grad16 - grad32).norm() / grad32.norm()).item() < 0.02   # the scaler divided its factor out


def test_autocast_context_is_a_no_op_without_a_dtype():
    layer = torch.nn.Linear(3, 2)
    with autocast_context("cpu", None):
        assert layer(torch.ones(1, 3)).dtype == torch.float32
    with autocast_context("cpu", torch.bfloat16):
        assert layer(torch.ones(1, 3)).dtype == torch.bfloat16
    assert default_autocast_dtype("cpu") is None


def test_gradient_accumulation_equals_the_whole_batch():
    loss1, grad1 = sgd_update(fresh_small())
    loss2, grad2 = sgd_update(fresh_small(), TrainOptions(grad_accum_steps=2))
    assert abs(loss2 - loss1) < 1e-5
    torch.testing.assert_close(grad2, grad1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        sgd_update(fresh_small(), TrainOptions(grad_accum_steps=3))


def test_gradient_clipping_scales_the_update_to_the_norm():
    _, grad = sgd_update(fresh_small())
    assert grad.norm() > 0.5
    _, clipped = sgd_update(fresh_small(), TrainOptions(grad_clip=0.5))
    torch.testing.assert_close(clipped, grad * (0.5 / grad.norm()), rtol=1e-4, atol=1e-6)


def test_options_reject_bad_values():
    with pytest.raises(ValueError, match="autocast_dtype"):
        TrainOptions(autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainOptions(grad_clip=0.0)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainOptions(grad_accum_steps=0)


def test_make_optimizer_is_chapter_28s_adamw_and_fused_agrees():
    results = []
    for fused in (None, False, True):
        model = fresh_small()
        opt = (torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1) if fused is None
               else make_optimizer(model, lr=1e-3, weight_decay=0.1, fused=fused))
        for step in range(3):
            train_step(model, opt, *small_batch(step))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    torch.testing.assert_close(results[2], results[0], rtol=1e-5, atol=1e-6)   # one kernel, other rounding


def test_fused_adamw_unavailable_is_a_clear_error(monkeypatch):
    # torch 2.13 fuses AdamW on the CPU; older builds refuse, which we imitate here.
    real = torch.optim.AdamW

    def old_torch_adamw(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be CUDA, floating point Tensors")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", old_torch_adamw)
    with pytest.raises(ValueError, match="fused=False"):
        make_optimizer(fresh_small(), fused=True)
    assert isinstance(make_optimizer(fresh_small(), fused=False), real)


def _compile_works() -> bool:
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
        return True
    except Exception:  # no C++ compiler, or an unsupported platform
        return False


@pytest.mark.skipif(not _compile_works(), reason="torch.compile needs a working C++ compiler on the CPU")
def test_compiled_step_equals_eager():
    # The first compilation on a machine takes tens of seconds (it builds C++ kernels); later runs hit the cache.
    loss_eager, grad_eager = sgd_update(fresh_small())
    model = fresh_small()
    loss_compiled, grad_compiled = sgd_update(model, step_model=torch.compile(model))
    assert abs(loss_compiled - loss_eager) < 1e-5
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-4, atol=1e-6)
    assert unwrap_model(torch.compile(model)) is model


def test_train_model_counts_steps_and_tokens_and_stops_at_max_steps(capsys):
    torch.manual_seed(0)
    train, val = loaders()
    model = GPTModel(TINY)
    opt = make_optimizer(model, lr=1e-3)
    options = TrainOptions(autocast_dtype=torch.bfloat16, grad_clip=1.0, grad_accum_steps=2)
    history = train_model(model, train, val, opt, num_epochs=3, eval_every=2, eval_batches=1,
                          options=options, progress=False, max_steps=5)
    assert history.steps == [1, 3, 5] and history.seen == [4 * 32, 3 * 4 * 32, 5 * 4 * 32]
    assert len(history.train_losses) == len(history.val_losses) == 3 and len(history.step_losses) == 5
    assert capsys.readouterr().out.count("train loss") == 3


def test_weights_digest_sees_any_change():
    a, b = fresh_small(), fresh_small()
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.final_norm.shift[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)


def test_distributed_dataloader_splits_one_shuffle_between_ranks():
    data = torch.utils.data.TensorDataset(torch.arange(12))
    one = [batch[0].tolist() for batch in distributed_dataloader(data, 4, seed=5, num_replicas=1, rank=0)]
    ranks = [[batch[0].tolist() for batch in distributed_dataloader(data, 2, seed=5, num_replicas=2, rank=r)]
             for r in range(2)]
    # step k: the two ranks' batches of 2 are together the single process's batch of 4
    for k, whole in enumerate(one):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(whole)
        assert set(ranks[0][k]).isdisjoint(ranks[1][k])
    with pytest.raises(ValueError, match="batch_size=4"):
        distributed_dataloader(data, 4, num_replicas=4, rank=0)


def test_without_torchrun_there_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.backend) == (0, 1, True, None)
    destroy_distributed()   # nothing to leave: no error
