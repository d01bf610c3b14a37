"""What a training run measured: one history type for every loop in llm_lib.

Pretraining (chapter 28), the fast path (36, 37), the spam classifier (33)
and instruction finetuning (34) all return a ``TrainingHistory``. Each
evaluation appends one entry to each of its lists, so ``history.steps[i]``,
``history.seen[i]`` and ``history.val_losses[i]`` describe the same moment;
``step_losses`` holds the training loss of every single step. The cache of
trained models stores it as JSON (``as_dict`` / ``from_dict``), and
``viz.plot_losses`` draws it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

__all__ = ["TrainingHistory", "progress_bar"]


def _percent_or_loss(name: str, value: float) -> str:
    return f"{value:.1%}" if name.endswith("acc") else f"{value:.3f}"


@dataclass
class TrainingHistory:
    """The evaluations of one training run, oldest first, and the loss of every step.

    ``steps``: optimizer steps taken when the evaluation ran (0: before
    training). ``epochs``: the same in epochs (steps / steps per epoch).
    ``seen``: what the model had trained on by then, counted in ``unit``
    (tokens or examples, over all processes). ``train_losses`` and
    ``val_losses``: the losses measured then (NaN where one was not
    measured). ``metrics``: further measurements by name, one value per
    evaluation (the classifier's ``train_acc`` and ``val_acc``).
    """

    unit: str = "tokens"
    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def record(self, *, step: int, epoch: float, seen: int, train_loss: float, val_loss: float,
               **metrics: float) -> None:
        """Append one evaluation. Steps never go back, and every evaluation measures the same metrics."""
        if self.steps and step < self.steps[-1]:
            raise ValueError(f"evaluations are recorded in order: step {step} after step {self.steps[-1]}")
        if self.steps and set(metrics) != set(self.metrics):
            raise ValueError(f"every evaluation records the same metrics: {sorted(self.metrics)} "
                             f"so far, got {sorted(metrics)}")
        self.steps.append(int(step))
        self.epochs.append(float(epoch))
        self.seen.append(int(seen))
        self.train_losses.append(float(train_loss))
        self.val_losses.append(float(val_loss))
        for name, value in metrics.items():
            self.metrics.setdefault(name, []).append(float(value))

    def best(self, key: str = "val_losses") -> int:
        """Index of the evaluation with the lowest ``key`` (a loss list) or highest (a metric ending in acc)."""
        values = getattr(self, key) if hasattr(self, key) else self.metrics[key]
        if not values:
            raise ValueError("the history has no evaluations yet")
        measured = [i for i, v in enumerate(values) if not math.isnan(v)]
        pick = max if key.endswith("acc") else min
        return pick(measured, key=values.__getitem__)

    def line(self, index: int = -1, total_steps: int | None = None) -> str:
        """One evaluation as a line of the training log, e.g. ``step 6/90 | epoch 0.67 | ...``."""
        i = range(len(self))[index]
        width = len(str(total_steps)) if total_steps else 0
        step = f"step {self.steps[i]:>{width}}" + (f"/{total_steps}" if total_steps else "")
        parts = [step, f"epoch {self.epochs[i]:.2f}", f"{self.seen[i]:,} {self.unit}"]
        losses = [f"{name} loss {value:.3f}" for name, value in
                  (("train", self.train_losses[i]), ("val", self.val_losses[i])) if not math.isnan(value)]
        extra = [f"{name} {_percent_or_loss(name, values[i])}" for name, values in self.metrics.items()]
        return " | ".join(parts + [", ".join(losses + extra)])

    def as_dict(self) -> dict:
        """Plain lists and numbers, for JSON (the checkpoint cache stores this)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingHistory:
        """The history ``as_dict`` wrote; an unknown or missing field is a clear error."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"not a TrainingHistory: fields {sorted(data)}, expected {sorted(names)}")
        return cls(**data)


def progress_bar(total: int, desc: str = "training", enabled: bool = True):
    """The tqdm bar every loop shows on stderr (so it never mixes with the printed log); off if not enabled."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, file=sys.stderr, leave=False,
                mininterval=1.0)
