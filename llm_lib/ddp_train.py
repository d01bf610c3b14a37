"""Train a small GPT with DistributedDataParallel on every process that torchrun starts (chapter 37).

    # two CPU processes on this machine (gloo)
    torchrun --standalone --nproc_per_node=2 -m llm_lib.ddp_train --out runs/ddp
    # every GPU of this machine (nccl), a bigger model
    torchrun --standalone --nproc_per_node=gpu -m llm_lib.ddp_train --out runs/ddp --size small --bf16
    # one process, no torchrun: the same run on a single device
    python -m llm_lib.ddp_train --out runs/single

Every process builds the same seeded model, wraps it in DistributedDataParallel
and reads its own share of The Verdict through a DistributedSampler. After each
backward pass DDP averages the gradients over all processes (all-reduce), so
every process takes the same optimizer step and the copies stay identical.
Rank 0 prints the log and saves ``model.safetensors`` in ``--out``; every rank
writes ``rank{r}.json`` with a hash of its final weights, so a caller can check
that all ranks agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .checkpoints import save_checkpoint
from .data import GPTDataset
from .data_sources import load_text
from .distributed import DistributedInfo, destroy_distributed, distributed_dataloader, init_distributed, weights_digest
from .fast import FastGPTModel
from .model import GPTConfig
from .tokenizer import get_gpt2_encoding
from .train import TrainOptions, make_optimizer, train_model

__all__ = ["parse_args", "build_config", "run", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: model size, per-process batch, steps, fast-path switches and the output folder."""
    p = argparse.ArgumentParser(prog="python -m llm_lib.ddp_train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for model.safetensors and rank{r}.json")
    p.add_argument("--dataset", default="the-verdict.txt", help="a text from llm_lib.data_sources")
    p.add_argument("--size", choices=["tiny", "small", "medium", "large", "xl"], default="tiny",
                   help="tiny: 2 layers of width 32 (CPU); the others are GPT-2's sizes")
    p.add_argument("--context-length", type=int, default=32)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=4, help="sequences per process and step")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--eval-every", type=int, default=5, help="evaluate after step 1 and every N steps more")
    p.add_argument("--eval-batches", type=int, default=2, help="batches per loss estimate")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW's fused kernel")
    p.add_argument("--grad-accum-steps", type=int, default=1)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                   help="default: nccl with CUDA GPUs, gloo on the CPU")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when there is a GPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> GPTConfig:
    """The model of ``args.size``: a tiny 2-layer GPT, or one of GPT-2's sizes, with the run's context and dropout."""
    common = dict(context_length=args.context_length, drop_rate=args.drop_rate)
    if args.size == "tiny":
        return GPTConfig(emb_dim=32, n_heads=2, n_layers=2, **common)
    return GPTConfig.gpt2(args.size, **common)


def run(args: argparse.Namespace, info: DistributedInfo):
    """Train on this process's share (DDP if world_size > 1); returns ``(model, result)``.

    ``model`` is the plain FastGPTModel, not the DDP wrapper; ``result`` is the
    TrainingHistory as a dict (losses averaged over ranks, the tokens seen by
    all ranks) with this rank's number, the world size and its weights hash.
    """
    say = print if info.is_main else (lambda *a, **k: None)
    tokenizer = get_gpt2_encoding()
    text = load_text(args.dataset)
    split, n = int(0.9 * len(text)), args.context_length
    train_set = GPTDataset(text[:split], tokenizer, max_length=n, stride=n)
    val_set = GPTDataset(text[split:], tokenizer, max_length=n, stride=n)
    # The same seed on every rank: all permute the windows alike, then
    # each rank keeps every world_size-th one, so no window is read twice.
    train_loader = distributed_dataloader(train_set, args.batch_size, seed=args.seed)
    val_loader = distributed_dataloader(val_set, args.batch_size, shuffle=False,
                                        drop_last=False)

    torch.manual_seed(args.seed)   # the same start everywhere (DDP also copies rank 0's)
    model = FastGPTModel(build_config(args)).to(info.device)
    train_target = model
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        on_gpu = info.device.type == "cuda"
        train_target = DDP(model, device_ids=[info.local_rank] if on_gpu else None)
    optimizer = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay,
                               fused=args.fused_adamw)
    options = TrainOptions(autocast_dtype=torch.bfloat16 if args.bf16 else None,
                           compile=args.compile, grad_clip=args.grad_clip,
                           grad_accum_steps=args.grad_accum_steps)

    W, b = info.world_size, args.batch_size
    say(f"{W} process(es), backend {info.backend or 'none'}, device {info.device.type}")
    say(f"{len(train_set)} training windows: {len(train_loader)} steps per epoch "
        f"of {b} x {W} = {b * W} sequences")
    history = train_model(
        train_target, train_loader, val_loader, optimizer, num_epochs=args.epochs,
        eval_every=args.eval_every, eval_batches=args.eval_batches, device=info.device,
        options=options, progress=not args.quiet, max_steps=args.max_steps)

    digest = weights_digest(model)
    result = {**history.as_dict(), "rank": info.rank, "world_size": W, "weights_sha256": digest}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{info.rank}.json").write_text(json.dumps(result, indent=1))
    if info.is_main:   # one writer: the weights are the same on every rank
        settings = vars(args) | {"out": str(args.out)}
        save_checkpoint(args.out / "model.safetensors", model,
                        metadata={"world_size": W, "args": settings})
        say(f"saved {args.out / 'model.safetensors'}; weights sha256 {digest[:16]}")
    return model, result


def main(argv: list[str] | None = None) -> int:
    """Join the process group torchrun set up (if any), train, write the results, leave the group."""
    args = parse_args(argv)
    info = init_distributed(args.backend, args.device)
    try:
        run(args, info)
    finally:
        destroy_distributed()  # a barrier first: rank 0's checkpoint is written when any rank returns
    return 0


if __name__ == "__main__":
    sys.exit(main())
