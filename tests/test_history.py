"""TrainingHistory: the one record every training loop returns."""

import json
import math

import pytest

from llm_lib.history import TrainingHistory


def three_evaluations(**metrics):
    history = TrainingHistory(unit="examples")
    for step, loss in ((10, 0.7), (20, 0.4), (30, 0.5)):
        history.record(step=step, epoch=step / 10, seen=8 * step, train_loss=loss, val_loss=loss + 0.1,
                       **{name: value * step / 30 for name, value in metrics.items()})
    return history


def test_each_evaluation_fills_every_list():
    history = three_evaluations(val_acc=0.9)
    assert len(history) == 3
    assert history.steps == [10, 20, 30] and history.seen == [80, 160, 240]
    assert history.val_losses == pytest.approx([0.8, 0.5, 0.6])
    assert history.metrics["val_acc"] == pytest.approx([0.3, 0.6, 0.9])


def test_best_is_the_lowest_loss_or_the_highest_accuracy():
    history = three_evaluations(val_acc=0.9)
    assert history.best() == 1                 # val loss 0.5
    assert history.best("train_losses") == 1
    assert history.best("val_acc") == 2        # accuracy 0.9
    empty = TrainingHistory()
    with pytest.raises(ValueError, match="no evaluations"):
        empty.best()


def test_best_skips_losses_that_were_not_measured():
    history = TrainingHistory()
    history.record(step=0, epoch=0, seen=0, train_loss=math.nan, val_loss=2.0)
    history.record(step=5, epoch=1, seen=50, train_loss=1.5, val_loss=1.8)
    assert history.best("train_losses") == 1
    assert "train loss" not in history.line(0) and "val loss 2.000" in history.line(0)


def test_records_must_come_in_order_with_the_same_metrics():
    history = three_evaluations(val_acc=0.9)
    with pytest.raises(ValueError, match="in order"):
        history.record(step=5, epoch=0.5, seen=40, train_loss=1.0, val_loss=1.0, val_acc=0.5)
    with pytest.raises(ValueError, match="same metrics"):
        history.record(step=40, epoch=4, seen=320, train_loss=1.0, val_loss=1.0)


def test_log_line_names_step_epoch_seen_and_measurements():
    history = three_evaluations(val_acc=0.9)
    assert history.line(total_steps=300) == ("step  30/300 | epoch 3.00 | 240 examples | "
                                             "train loss 0.500, val loss 0.600, val_acc 90.0%")
    assert history.line(0).startswith("step 10 | epoch 1.00 | 80 examples")


def test_round_trip_through_json_and_clear_error_for_other_dicts():
    history = three_evaluations(train_acc=0.8, val_acc=0.9)
    history.step_losses.extend([0.9, 0.8])
    assert TrainingHistory.from_dict(json.loads(json.dumps(history.as_dict()))) == history
    with pytest.raises(ValueError, match="not a TrainingHistory"):
        TrainingHistory.from_dict({"train_losses": [1.0], "val_losses": [1.0], "tokens_seen": [1]})
