"""CPU training-step time: llm_lib's teaching path, its fast path, and Hugging Face GPT-2, in one run.

    python benchmarks/train_step_cpu.py             # GPT-2 small (124M), context 256, batch 2
    python benchmarks/train_step_cpu.py --tiny      # a 2-layer model: checks the script in seconds
    python benchmarks/train_step_cpu.py --compile   # adds torch.compile rows (minutes of compiling)

One step = zero the gradients, forward pass, cross-entropy, backward pass,
AdamW update (lr 4e-4, weight decay 0.1, as in chapter 28), on random token
ids. Every model starts from the same seed; speed does not depend on the
weights. Each row reports the median over ``--steps`` timed steps after
``--warmup`` untimed ones.

Rows:
  teaching        GPTConfig defaults: explicit attention, separate output head, float32, AdamW
  fast fp32       fused attention + fused layer norm and GELU + tied head + vocabulary padded to 64 + fused AdamW
                  (+ GPT-2's initialisation, init_gpt2_weights, which a tied head needs)
  fast bf16       the same under torch.autocast(bfloat16)
  HF fp32         transformers GPT2LMHeadModel (sdpa attention, tied head), AdamW
  HF bf16         the same under torch.autocast(bfloat16), fused AdamW
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from common import (
    TINY,
    LogitsOnly,
    environment,
    hf_config,
    median,
    print_environment,
    report,
    set_threads,
    time_calls,
)
from profiling import profile_steps

from llm_lib.fast import FastGPTModel
from llm_lib.model import GPTConfig, GPTModel, init_gpt2_weights

try:  # the training loop's own step, when llm_lib.train has it (chapter 36)
    from llm_lib.train import TrainOptions, train_step
except ImportError:  # pragma: no cover - older llm_lib
    TrainOptions = train_step = None


def one_step(model, optimizer, x, y, autocast_dtype, device):
    """Zero grads, forward and loss (under autocast), backward, update; returns the loss."""
    if train_step is not None:
        return train_step(model, optimizer, x, y, device, TrainOptions(autocast_dtype=autocast_dtype))
    optimizer.zero_grad(set_to_none=True)
    if autocast_dtype is None:
        ctx = contextlib.nullcontext()
    else:
        ctx = torch.autocast(torch.device(device).type, dtype=autocast_dtype)
    with ctx:
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    optimizer.step()
    return loss.item()


def build(variant: str, cfg: GPTConfig, device):
    """(model, optimizer, autocast dtype) of one row."""
    torch.manual_seed(123)
    fast_cfg = cfg.replace(fused_attention=True, fused_layers=True, tie_weights=True, vocab_pad_multiple=64)
    if variant.startswith("teaching"):
        model, fused_adam, dtype = GPTModel(cfg), False, None
    elif variant.startswith("fast fp32"):
        model, fused_adam, dtype = init_gpt2_weights(FastGPTModel(fast_cfg)), True, None
    elif variant.startswith("fast bf16"):
        model, fused_adam, dtype = init_gpt2_weights(FastGPTModel(fast_cfg)), True, torch.bfloat16
    elif variant.startswith("HF fp32"):
        import transformers

        model, fused_adam, dtype = LogitsOnly(transformers.GPT2LMHeadModel(hf_config(cfg, tied=True))), False, None
    elif variant.startswith("HF bf16"):
        import transformers

        model = LogitsOnly(transformers.GPT2LMHeadModel(hf_config(cfg, tied=True)))
        fused_adam, dtype = True, torch.bfloat16
    else:
        raise ValueError(f"unknown variant {variant!r}")
    model = model.to(device).train()
    kwargs = {"fused": True} if fused_adam else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, **kwargs)
    if variant.endswith("+ compile"):
        model = torch.compile(model)
    return model, optimizer, dtype


def time_variant(variant: str, cfg: GPTConfig, x, y, steps: int, warmup: int, device, profile: int = 0):
    """Seconds of each timed step of one row, the loss of its first step, and a profile of ``profile`` more steps."""
    model, optimizer, dtype = build(variant, cfg, device)
    losses = []
    times = time_calls(lambda: losses.append(one_step(model, optimizer, x, y, dtype, device)), steps, warmup)
    result = None
    if profile:
        def run(n):
            for _ in range(n):
                one_step(model, optimizer, x, y, dtype, device)

        result = profile_steps(run, profile, torch.device(device))
    return times, losses[0], result


VARIANTS = ["teaching", "fast fp32", "fast bf16", "HF fp32", "HF bf16"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["small", "medium", "large", "xl"])
    p.add_argument("--tiny", action="store_true", help="a 2-layer model, to check the script quickly")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per row before timing")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of every model (chapter 28 uses 0.1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd versions of the fast bf16 and HF bf16 rows")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N more steps of each row and show where the time goes")
    p.add_argument("--json", metavar="PATH", help="also save the results there (see benchmarks/report.py)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    device = "cpu"
    base = TINY if args.tiny else GPTConfig.gpt2(args.size)
    cfg = base.replace(context_length=args.context, drop_rate=args.dropout)
    variants = list(args.variants)
    if args.compile:
        variants += [v + " + compile" for v in ("fast bf16", "HF bf16") if v in variants]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.context), generator=gen)
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.context), generator=gen)

    env = environment(device)
    print_environment(env)
    rows, profiles = [], {}
    for variant in variants:
        times, first_loss, profiled = time_variant(variant, cfg, x, y, args.steps, args.warmup, device, args.profile)
        seconds = median(times)
        if profiled:
            profiles[variant] = {"step_ms": 1000 * seconds, **profiled}
        rows.append([variant, f"{seconds:.3f}", f"{min(times):.3f}",
                     f"{args.batch * args.context / seconds:.0f}", f"{first_loss:.3f}"])
    ref = {r[0]: float(r[1]) for r in rows}
    for row in rows:
        row.insert(3, f"{ref[rows[0][0]] / float(row[1]):.2f}x")
        hf = "HF bf16" if "bf16" in row[0] else "HF fp32"
        row.insert(4, f"{ref[hf] / float(row[1]):.2f}x" if hf in ref else "n/a")
    name = "tiny 2-layer model" if args.tiny else f"GPT-2 {args.size}"
    title = (f"One training step, {name}, context {args.context}, batch {args.batch}, dropout {args.dropout}, "
             f"median of {args.steps} steps after {args.warmup} warm-up step(s); speed-ups > 1 are faster "
             f"(\"vs HF\" compares with the HF row of the same precision)")
    report(title, ["variant", "s/step (median)", "s/step (best)", f"vs {rows[0][0]}", "vs HF", "tokens/s",
                   "first loss"], rows, env, args.json, "train-step-cpu", profiles)

if __name__ == "__main__":
    main()
