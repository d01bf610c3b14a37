"""GPU training throughput and MFU of GPT-2 124M: llm_lib's fast path against Hugging Face GPT-2, one run.

    python benchmarks/train_gpu.py                          # H100: B=32, T=1024, bf16, torch.compile
    python benchmarks/train_gpu.py --batch 16 --steps 50    # other sizes
    python benchmarks/train_gpu.py --profile 5              # and where each row's step time goes
    python benchmarks/train_gpu.py --json benchmarks/results/train-gpu.json   # save for the README (report.py)
    python benchmarks/train_gpu.py --device cpu --tiny      # smoke test of the script on a CPU (seconds)

Rows (every one trains with bf16 autocast, fused AdamW and torch.compile, dropout 0):
  llm_lib fast     FastGPTModel with fused attention, layer norm and GELU, tied head, vocabulary padded to
                   50,304, GPT-2's init
  HF               transformers GPT2LMHeadModel, sdpa attention, tied head, vocab_size=50,304
  llm_lib teaching (only with --variants ... teaching) GPTConfig defaults, float32, no compile

The data are random token ids already on the GPU (no loader in the loop): the
numbers measure the model and the optimizer. Warm-up steps (compilation,
autotuning, allocator growth) are excluded; the timed steps are bracketed by
torch.cuda.synchronize().

Model FLOPs per token = 6N + 12·L·H·Q·T (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B):
N = parameters with the output head counted once and no position embeddings, for the
real 50,257-token vocabulary (123,625,728 for GPT-2 small, padding excluded), L layers,
H heads of Q features, context T. MFU = tokens/s x FLOPs per token / peak, peak = 989
TFLOP/s (H100 SXM, dense bf16) unless --peak-tflops says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import torch
import torch.nn.functional as F
from common import TINY, LogitsOnly, environment, hf_config, print_environment, report, synchronize
from profiling import profile_steps

from llm_lib.fast import FastGPTModel
from llm_lib.model import GPTConfig, GPTModel, init_gpt2_weights

H100_SXM_BF16_TFLOPS = 989.0
VARIANTS = ["llm_lib fast", "HF", "llm_lib teaching"]
ATTENTION_BACKENDS = ["auto", "flash", "cudnn", "efficient", "math"]


def attention_backend(name: str):
    """A context that restricts F.scaled_dot_product_attention to one backend ("auto": PyTorch's choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel([backend])


def model_flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """6N + 12·L·H·Q·T: N without position embeddings, output head counted once, real vocabulary."""
    real = cfg.replace(vocab_pad_multiple=1)
    n = real.num_parameters(tied=True) - real.context_length * real.emb_dim
    head_dim = cfg.emb_dim // cfg.n_heads
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * head_dim * seq_len


def build(variant: str, cfg: GPTConfig, device, compile_model: bool, compile_mode: str | None):
    """(model, optimizer, autocast dtype or None) for one row."""
    torch.manual_seed(123)
    fused_adam = device.type == "cuda"  # fused AdamW also exists on the CPU; keep the smoke test simple
    if variant == "llm_lib fast":
        model = init_gpt2_weights(FastGPTModel(cfg.replace(fused_attention=True, fused_layers=True,
                                                       tie_weights=True, vocab_pad_multiple=64)))
        dtype, do_compile = torch.bfloat16, compile_model
    elif variant == "HF":
        import transformers

        padded = cfg.replace(vocab_pad_multiple=64).padded_vocab_size
        model = LogitsOnly(transformers.GPT2LMHeadModel(hf_config(cfg, vocab_size=padded, tied=True)))
        dtype, do_compile = torch.bfloat16, compile_model
    elif variant == "llm_lib teaching":
        model, dtype, do_compile, fused_adam = GPTModel(cfg), None, False, False
    else:
        raise ValueError(f"unknown variant {variant!r}")
    model = model.to(device).train()
    kwargs = {"fused": True} if fused_adam else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), **kwargs)
    if do_compile:
        model = torch.compile(model, mode=compile_mode)
    return model, optimizer, dtype


def train_steps(model, optimizer, batches, steps: int, dtype, device) -> torch.Tensor:
    """``steps`` optimizer steps over the list ``batches`` (cycled); returns the last loss (on the device)."""
    loss = None
    for i in range(steps):
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
    return loss.detach()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (for --device cpu smoke tests)")
    p.add_argument("--size", default="small", choices=["small", "medium", "large", "xl"])
    p.add_argument("--batch", "-B", type=int, default=32)
    p.add_argument("--seq", "-T", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per row (compilation happens here)")
    p.add_argument("--variants", nargs="+", default=VARIANTS[:2], choices=VARIANTS)
    p.add_argument("--no-compile", action="store_true", help="eager mode for every row")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    p.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                   help="restrict scaled_dot_product_attention to one backend (default: PyTorch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N more steps of each row and show where the time goes")
    p.add_argument("--json", metavar="PATH", help="also save the results there (see benchmarks/report.py)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"peak dense bf16 TFLOP/s for MFU (default {H100_SXM_BF16_TFLOPS:g} on CUDA, none on CPU)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --device cpu --tiny to check the script")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for any float32 matrix product left
    peak = args.peak_tflops or (H100_SXM_BF16_TFLOPS if device.type == "cuda" else None)
    base = TINY if args.tiny else GPTConfig.gpt2(args.size)
    cfg = base.replace(context_length=args.seq, drop_rate=0.0)
    flops = model_flops_per_token(cfg, args.seq)

    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = [(torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen).to(device),
                torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen).to(device))
               for _ in range(4)]

    env = environment(args.device)
    print_environment(env)
    rows, profiles = [], {}
    for variant in args.variants:
        model, optimizer, dtype = build(variant, cfg, device, not args.no_compile, args.compile_mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with attention_backend(args.attention_backend):
            start = time.perf_counter()
            train_steps(model, optimizer, batches, args.warmup, dtype, device)
            synchronize(device)
            warmup_s = time.perf_counter() - start
            start = time.perf_counter()
            loss = train_steps(model, optimizer, batches, args.steps, dtype, device)
            synchronize(device)
            seconds = time.perf_counter() - start
            if args.profile:
                run = functools.partial(train_steps, model, optimizer, batches, dtype=dtype, device=device)
                profiled = profile_steps(run, args.profile, device)
                profiles[variant] = {"step_ms": 1000 * seconds / args.steps, **profiled}
        tokens_per_s = args.steps * args.batch * args.seq / seconds
        tflops = tokens_per_s * flops / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "n/a"
        compiled = "eager" if dtype is None or args.no_compile else f"compile({args.compile_mode or 'default'})"
        precision = "bf16 autocast" if dtype is not None else "fp32"
        rows.append([variant, f"{precision}, {compiled}", f"{1000 * seconds / args.steps:.1f}",
                     f"{tokens_per_s:,.0f}", f"{tflops:.3g}", mfu, memory, f"{warmup_s:.0f}",
                     f"{loss.item():.3f}"])
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = "tiny 2-layer model" if args.tiny else f"GPT-2 {args.size}"
    attention = "" if args.attention_backend == "auto" else f", attention backend {args.attention_backend}"
    title = (f"Training throughput, {name}, B={args.batch}, T={args.seq}, {args.steps} timed steps after "
             f"{args.warmup} warm-up steps{attention}, {flops / 1e6:.1f} MFLOP/token (6N + 12LHQT), "
             f"peak {peak if peak else 'n/a'} TFLOP/s")
    report(title, ["variant", "mode", "ms/step", "tokens/s", "TFLOP/s", "MFU", "peak GiB", "warm-up s",
                   "last loss"], rows, env, args.json, "train-gpu", profiles)

if __name__ == "__main__":
    main()
