"""The spam classifier of chapter 33: data, padding, the head, freezing, cached hidden states, training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llm_lib.finetune import (
    CLASS_NAMES,
    PAD_TOKEN_ID,
    HiddenStateDataset,
    SpamDataset,
    add_classification_head,
    balance_classes,
    cache_hidden_states,
    classifier_logits,
    classifier_outputs,
    classify_text,
    confusion_matrix,
    drop_duplicates,
    evaluate_classifier,
    freeze_for_classification,
    hidden_states,
    load_sms_spam,
    train_classifier,
    train_val_test_split,
)
from llm_lib.model import GPTConfig, GPTModel
from llm_lib.tokenizer import get_gpt2_encoding

TINY = GPTConfig(context_length=32, emb_dim=16, n_heads=2, n_layers=3, drop_rate=0.0)

ROWS = [
    ("Free entry! Win a prize now, text WIN to 80085", 1),
    ("Are we still on for lunch?", 0),
    ("URGENT: your mobile has won 2000 pounds. Call 09061701461 to claim", 1),
    ("ok", 0),
    ("Sorry, I'll call you later", 0),
    ("Claim your free ringtone: reply YES", 1),
]


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_encoding()


def classifier(cfg=TINY, trainable="last_block", seed=0):
    torch.manual_seed(seed)
    model = add_classification_head(GPTModel(cfg))
    freeze_for_classification(model, trainable)
    return model.eval()


# ---------------------------------------------------------------- data


def test_load_sms_spam_reads_every_line_with_quotes_intact():
    rows = load_sms_spam()
    assert len(rows) == 5574
    labels = [label for _, label in rows]
    assert labels.count(0) == 4827 and labels.count(1) == 747
    assert CLASS_NAMES[rows[0][1]] == "ham" and rows[0][0].startswith("Go until jurong point")
    # CSV quoting would glue lines that contain quote characters together
    assert sum('"' in text for text, _ in rows) > 20
    assert all("\n" not in text and "\t" not in text for text, _ in rows)


def test_balance_classes_undersamples_with_a_seed():
    rows = [(f"h{i}", 0) for i in range(10)] + [(f"s{i}", 1) for i in range(3)]
    balanced = balance_classes(rows, seed=1)
    assert [label for _, label in balanced].count(0) == 3 and len(balanced) == 6
    assert balanced == balance_classes(rows, seed=1)
    assert balanced != balance_classes(rows, seed=2)
    positions = [rows.index(r) for r in balanced]
    assert positions == sorted(positions)  # kept rows stay in file order
    with pytest.raises(ValueError, match="no rows"):
        balance_classes([])


def test_balance_classes_keeps_per_class_rows_of_each_class():
    rows = [(f"h{i}", 0) for i in range(10)] + [(f"s{i}", 1) for i in range(5)]
    balanced = balance_classes(rows, seed=1, per_class=2)
    assert sorted(label for _, label in balanced) == [0, 0, 1, 1]
    assert set(balanced) <= set(rows)
    with pytest.raises(ValueError, match=r"per_class must be in 1\.\.5: class 1 has only 5 rows"):
        balance_classes(rows, per_class=6)
    with pytest.raises(ValueError, match="per_class"):
        balance_classes(rows, per_class=0)


def test_drop_duplicates_keeps_the_first_copy_in_place():
    rows = [("a", 0), ("b", 1), ("a", 0), ("c", 0), ("b", 1)]
    assert drop_duplicates(rows) == [("a", 0), ("b", 1), ("c", 0)]
    with pytest.raises(ValueError, match="occurs with labels 0 and 1"):
        drop_duplicates([("a", 0), ("a", 1)])


def test_the_books_split_of_the_collection():
    rows = drop_duplicates(load_sms_spam())
    labels = [label for _, label in rows]
    assert (labels.count(0), labels.count(1)) == (4518, 653)  # 403 repeated messages dropped
    balanced = balance_classes(rows, per_class=400)
    assert len(balanced) == 800
    train, val, test = train_val_test_split(balanced, 0.7, 0.1)
    assert (len(train), len(val), len(test)) == (560, 80, 160)
    seen = {text for text, _ in train}
    assert not any(text in seen for text, _ in val + test)  # no message is in two splits
    # without dropping duplicates, 25 of the 300 test messages would also be training messages
    train, _, test = train_val_test_split(balance_classes(load_sms_spam()), 0.7, 0.1)
    seen = {text for text, _ in train}
    assert sum(text in seen for text, _ in test) == 25


def test_spam_dataset_pads_with_endoftext_to_the_longest_message(tokenizer):
    ds = SpamDataset(ROWS, tokenizer)
    encoded = [tokenizer.encode(text) for text, _ in ROWS]
    assert ds.max_length == max(len(e) for e in encoded) and len(ds) == len(ROWS)
    ids, label, length = ds[3]  # "ok": one token, then padding
    assert ids.shape == (ds.max_length,) and int(label) == 0 and int(length) == 1
    assert ids[0].item() == encoded[3][0] and (ids[1:] == PAD_TOKEN_ID).all()
    assert PAD_TOKEN_ID == tokenizer.encode("<|endoftext|>", allowed_special="all")[0]
    ids, labels, lengths = next(iter(DataLoader(ds, batch_size=6)))
    assert ids.shape == (6, ds.max_length) and labels.tolist() == [r[1] for r in ROWS]
    assert lengths.tolist() == [len(e) for e in encoded]


def test_spam_dataset_truncates_and_checks_the_context(tokenizer):
    ds = SpamDataset(ROWS, tokenizer, max_length=5)
    assert ds.max_length == 5 and max(ds.lengths) == 5
    assert ds[0][0].tolist() == tokenizer.encode(ROWS[0][0])[:5]
    longest = max(len(tokenizer.encode(t)) for t, _ in ROWS)
    with pytest.raises(ValueError, match=f"longest message has {longest} tokens.*context_length is 8"):
        SpamDataset(ROWS, tokenizer, context_length=8)
    assert SpamDataset(ROWS, tokenizer, max_length=8, context_length=8).max_length == 8
    with pytest.raises(ValueError, match="max_length=9 is longer than the model's context_length=8"):
        SpamDataset(ROWS, tokenizer, max_length=9, context_length=8)
    with pytest.raises(ValueError, match="no tokens"):
        SpamDataset([("", 0)], tokenizer)
    with pytest.raises(ValueError, match="at least one"):
        SpamDataset([], tokenizer)


# ---------------------------------------------------------------- head and freezing


def test_head_replaces_the_vocabulary_projection():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    before = copy.deepcopy(model.trf_blocks.state_dict())
    add_classification_head(model)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 2)
    assert model.out_head.weight.shape == (2, TINY.emb_dim) and model.out_head.bias is not None
    assert all(torch.equal(before[k], v) for k, v in model.trf_blocks.state_dict().items())
    with pytest.raises(ValueError, match="at least 2 classes"):
        add_classification_head(model, num_classes=1)


def test_freezing_leaves_the_top_trainable():
    model = add_classification_head(GPTModel(TINY))
    top = [model.trf_blocks[-1], model.final_norm, model.out_head]
    n_top = sum(p.numel() for m in top for p in m.parameters())
    assert freeze_for_classification(model, "last_block") == n_top
    assert not model.tok_emb.weight.requires_grad and not any(
        p.requires_grad for p in model.trf_blocks[0].parameters())
    assert all(p.requires_grad for m in top for p in m.parameters())
    assert freeze_for_classification(model, 1) == n_top
    assert freeze_for_classification(model, 0) == sum(
        p.numel() for m in top[1:] for p in m.parameters())
    assert freeze_for_classification(model, "all") == sum(p.numel() for p in model.parameters())
    for bad in ("top", 4, -1, True):
        with pytest.raises(ValueError, match="last_block"):
            freeze_for_classification(model, bad)


# ---------------------------------------------------------------- logits at the last real token


def test_logits_come_from_the_last_real_token():
    model = classifier()
    ids = torch.randint(0, 1000, (3, 7))
    lengths = torch.tensor([7, 2, 5])
    full = model(ids)  # (3, 7, 2) from the ordinary forward pass
    expected = full[torch.arange(3), lengths - 1]
    torch.testing.assert_close(classifier_logits(model, ids, lengths), expected)


def test_padding_does_not_change_a_messages_logits():
    model = classifier()
    message = torch.tensor([[11, 22, 33, 44]])
    alone = classifier_logits(model, message, torch.tensor([4]))
    for pad in (torch.full((1, 9), PAD_TOKEN_ID), torch.randint(0, 50257, (1, 9))):
        padded = torch.cat([message, pad], dim=1)
        torch.testing.assert_close(classifier_logits(model, padded, torch.tensor([4])), alone)
        # the plain forward pass at the pad positions does change: the last position is not the answer
        assert not torch.allclose(model(padded)[0, -1], alone[0])


def test_classifier_logits_checks_its_inputs():
    model = classifier()
    with pytest.raises(ValueError, match="lengths must be one count in 1..4"):
        classifier_logits(model, torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="lengths must be one count"):
        classifier_logits(model, torch.zeros(2, 4, dtype=torch.long), torch.tensor([5, 3]))
    with pytest.raises(ValueError, match="expects token ids .* or hidden states"):
        classifier_logits(model, torch.zeros(2, 4, 8), torch.tensor([4, 3]))
    with pytest.raises(ValueError, match="start_block=2 expects hidden states"):
        classifier_logits(model, torch.zeros(2, 4, dtype=torch.long), torch.tensor([4, 3]), start_block=2)
    with pytest.raises(ValueError, match="start_block must be in 0..3"):
        classifier_logits(model, torch.zeros(2, 4, 16), torch.tensor([4, 3]), start_block=4)


@pytest.mark.parametrize("start_block", [0, 1, 2, 3])
def test_hidden_states_then_the_top_equal_the_whole_model(start_block):
    model = classifier()
    ids, lengths = torch.randint(0, 1000, (2, 6)), torch.tensor([6, 3])
    states = hidden_states(model, ids, start_block)
    assert states.shape == (2, 6, TINY.emb_dim)
    torch.testing.assert_close(classifier_logits(model, states, lengths, start_block),
                               classifier_logits(model, ids, lengths))


# ---------------------------------------------------------------- cached hidden states


def test_cache_holds_each_messages_states_without_padding(tokenizer):
    model = classifier()
    ds = SpamDataset(ROWS, tokenizer)
    cache = cache_hidden_states(model, ds, start_block=2, batch_size=4, progress=False)
    assert len(cache) == len(ds) and cache.start_block == 2 and cache.labels == ds.labels
    for i in range(len(ds)):
        ids, label, length = ds[i]
        states, cached_label, cached_length = cache[i]
        assert states.shape == (int(length), TINY.emb_dim) and cached_label == label and cached_length == length
        alone = hidden_states(model, ids[None, :int(length)], 2)[0]
        torch.testing.assert_close(states, alone)
    batch, labels, lengths = HiddenStateDataset.collate([cache[0], cache[3]])
    assert batch.shape == (2, int(lengths.max()), TINY.emb_dim) and (batch[1, 1:] == 0).all()


def test_cache_refuses_trainable_or_random_blocks(tokenizer):
    ds = SpamDataset(ROWS, tokenizer)
    with pytest.raises(ValueError, match="must be frozen"):
        cache_hidden_states(classifier(trainable="all"), ds, 2, progress=False)
    with pytest.raises(ValueError, match="drop_rate=0"):
        cache_hidden_states(classifier(cfg=TINY.replace(drop_rate=0.1)), ds, 2, progress=False)


def loaders_for(dataset, collate_fn=None, seed=5, batch_size=2):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn)


def test_training_on_the_cache_is_the_same_training(tokenizer):
    ds = SpamDataset(ROWS, tokenizer)
    on_ids = classifier()
    on_cache = copy.deepcopy(on_ids)
    cache = cache_hidden_states(on_cache, ds, start_block=2, progress=False)
    results = []
    for model, data, start, collate in ((on_ids, ds, 0, None), (on_cache, cache, 2, HiddenStateDataset.collate)):
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
        val = DataLoader(data, batch_size=4, collate_fn=collate)
        history = train_classifier(model, loaders_for(data, collate), val, optimizer, num_epochs=2,
                                   start_block=start, progress=False, verbose=False)
        results.append((model, history))
    (a, history_a), (b, history_b) = results
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
    assert history_a.step_losses == pytest.approx(history_b.step_losses, abs=1e-5)
    assert history_a.metrics["val_acc"] == history_b.metrics["val_acc"]


def test_training_on_a_cache_refuses_trainable_lower_blocks(tokenizer):
    model = classifier()
    cache = cache_hidden_states(model, SpamDataset(ROWS, tokenizer), start_block=2, progress=False)
    freeze_for_classification(model, "all")
    optimizer = torch.optim.AdamW(model.parameters())
    loader = DataLoader(cache, batch_size=2, collate_fn=HiddenStateDataset.collate)
    with pytest.raises(ValueError, match="cannot be trained"):
        train_classifier(model, loader, loader, optimizer, num_epochs=1, start_block=2, progress=False)


# ---------------------------------------------------------------- training, evaluation, classification


def keyword_task(tokenizer, n=40):
    """Messages that mention 'prize' are spam: a task a tiny model learns in a few epochs."""
    words = ["see", "you", "soon", "call", "me", "later", "lunch", "now", "ok", "home"]
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        picked = [words[j] for j in torch.randint(0, len(words), (int(torch.randint(2, 6, (1,), generator=g)),),
                                                  generator=g)]
        if i % 2:
            picked.insert(int(torch.randint(0, len(picked), (1,), generator=g)), "prize")
        rows.append((" ".join(picked), i % 2))
    return rows


EPOCHS = 10


@pytest.mark.parametrize("trainable", ["last_block", "all"])
def test_train_classifier_learns_and_keeps_frozen_weights(tokenizer, trainable):
    model = classifier(trainable=trainable, seed=1)
    frozen_before = model.trf_blocks[0].ff.layers[0].weight.detach().clone()
    rows = keyword_task(tokenizer)
    ds = SpamDataset(rows, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = train_classifier(model, loaders_for(ds, batch_size=4), DataLoader(ds, batch_size=8), optimizer,
                               num_epochs=EPOCHS, progress=False, verbose=False)
    assert history.epochs == list(range(1, EPOCHS + 1)) and history.seen[-1] == EPOCHS * len(ds)
    assert history.unit == "examples" and history.steps == [10 * e for e in range(1, EPOCHS + 1)]
    assert len(history.step_losses) == EPOCHS * 10 and sorted(history.metrics) == ["train_acc", "val_acc"]
    assert history.metrics["val_acc"][-1] == 1.0 and history.train_losses[-1] < history.train_losses[0]
    assert not model.training
    moved = not torch.equal(model.trf_blocks[0].ff.layers[0].weight, frozen_before)
    assert moved == (trainable == "all")
    # one message at a time, unpadded, classify_text agrees with the batched evaluation
    assert [classify_text(text, model, tokenizer) for text, _ in rows] == [CLASS_NAMES[y] for _, y in rows]


def test_train_classifier_prints_one_line_per_epoch(tokenizer, capsys):
    model = classifier()
    ds = SpamDataset(ROWS, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    loader = DataLoader(ds, batch_size=3)
    train_classifier(model, loader, loader, optimizer, num_epochs=2, progress=False)
    lines = capsys.readouterr().out.splitlines()
    steps = 2 * len(loader)
    assert len(lines) == 2 and lines[1].startswith(f"step {steps}/{steps} | epoch 2.00 | {2 * len(ds)} examples")
    assert "train loss" in lines[1] and "train_acc" in lines[1] and "val_acc" in lines[1]
    with pytest.raises(ValueError, match="num_epochs must be at least 1"):
        train_classifier(model, DataLoader(ds), DataLoader(ds), optimizer, num_epochs=0)


def test_evaluate_classifier_is_cross_entropy_and_accuracy_by_hand(tokenizer):
    model = classifier()
    ds = SpamDataset(ROWS, tokenizer)
    loader = DataLoader(ds, batch_size=4)
    logits, labels = classifier_outputs(model, loader)
    assert logits.shape == (len(ROWS), 2) and labels.tolist() == ds.labels
    by_hand = [classifier_logits(model, ds[i][0][None], ds[i][2][None])[0] for i in range(len(ds))]
    torch.testing.assert_close(logits, torch.stack(by_hand).detach())
    loss, accuracy = evaluate_classifier(model, loader)
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item())
    assert accuracy == pytest.approx((logits.argmax(-1) == labels).float().mean().item())


def test_classify_text_reads_at_most_the_context(tokenizer):
    model = classifier()
    long_text = "spam " * 100  # 100 tokens, the context is 32
    ids = tokenizer.encode(long_text)[:TINY.context_length]
    logits = classifier_logits(model, torch.tensor([ids]), torch.tensor([len(ids)]))
    assert classify_text(long_text, model, tokenizer) == CLASS_NAMES[int(logits.argmax())]
    assert classify_text("ok", model, tokenizer, class_names=("no", "yes")) in ("no", "yes")
    with pytest.raises(ValueError, match="no tokens"):
        classify_text("", model, tokenizer)
    with pytest.raises(ValueError, match="2 classes but 3 class names"):
        classify_text("ok", model, tokenizer, class_names=("a", "b", "c"))


def test_confusion_matrix_by_hand():
    labels = [0, 0, 0, 1, 1, 1, 1]
    predictions = [0, 1, 0, 1, 1, 0, 1]
    assert confusion_matrix(labels, predictions).tolist() == [[2, 1], [1, 3]]
    assert confusion_matrix(torch.tensor([2, 0]), torch.tensor([1, 0]), num_classes=3).tolist() == [
        [1, 0, 0], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        confusion_matrix([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="must lie in 0..1"):
        confusion_matrix([0, 2], [0, 1])


# ---------------------------------------------------------------- a Llama backbone (chapter 32)


def llama_classifier(seed=0):
    from llm_lib.llama import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50257, context_length=64, emb_dim=48, n_heads=6, n_kv_heads=2, n_layers=3,
                      hidden_dim=80)
    model = add_classification_head(LlamaModel(cfg))
    freeze_for_classification(model, "last_block")
    return model.eval()


def test_a_llama_backbone_reads_the_last_real_token_and_ignores_padding():
    model = llama_classifier()
    assert model.out_head.out_features == 2 and not model.tok_emb.weight.requires_grad
    message = torch.tensor([[11, 22, 33, 44]])
    alone = classifier_logits(model, message, torch.tensor([4]))
    padded = torch.cat([message, torch.full((1, 5), 7)], dim=1)
    torch.testing.assert_close(classifier_logits(model, padded, torch.tensor([4])), alone)
    hidden = model.final_norm(model.backbone(message)[:, -1])
    torch.testing.assert_close(alone, model.out_head(hidden))   # the model's own forward pass
    states = hidden_states(model, padded, 2)
    torch.testing.assert_close(classifier_logits(model, states, torch.tensor([4]), start_block=2), alone)


def test_training_a_llama_classifier_on_its_cache_is_the_same_training(tokenizer):
    ds = SpamDataset(ROWS, tokenizer)
    on_ids = llama_classifier(seed=1)
    on_cache = copy.deepcopy(on_ids)
    cache = cache_hidden_states(on_cache, ds, start_block=2, progress=False)
    results = []
    for model, data, start, collate in ((on_ids, ds, 0, None), (on_cache, cache, 2, HiddenStateDataset.collate)):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        val = DataLoader(data, batch_size=4, collate_fn=collate)
        results.append(train_classifier(model, loaders_for(data, collate), val, optimizer, num_epochs=2,
                                        start_block=start, progress=False, verbose=False))
    assert results[0].step_losses == pytest.approx(results[1].step_losses, abs=1e-5)
    assert classify_text(ROWS[0][0], on_cache, tokenizer) in CLASS_NAMES


def test_a_bfloat16_cache_is_float32_and_close_to_the_exact_one(tokenizer):
    model = classifier()
    ds = SpamDataset(ROWS, tokenizer)
    exact = cache_hidden_states(model, ds, start_block=2, progress=False)
    fast = cache_hidden_states(model, ds, start_block=2, progress=False, autocast_dtype=torch.bfloat16)
    for a, b in zip(exact.states, fast.states, strict=True):
        assert b.dtype == torch.float32 and b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.05)
    assert any(not torch.equal(a, b) for a, b in zip(exact.states, fast.states, strict=True))
    with pytest.raises(ValueError, match="autocast_dtype must be"):
        cache_hidden_states(model, ds, start_block=2, progress=False, autocast_dtype=torch.float64)
