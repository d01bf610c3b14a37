"""One decoding step's matrix-vector products: does the weight layout matter, or the fusing?

    python benchmarks/matvec_layout.py            # GPT-2 small's attention input projection
    python benchmarks/matvec_layout.py --tiny     # a quick check of the script

With a KV cache, each step multiplies one token's vector by every weight
matrix, so a step is bound by reading the weights from memory. This script
times the three ways of computing the queries, keys and values of that one
token (768 -> 3 x 768 in GPT-2 small) that the two implementations use:

- ``nn.Linear`` three times, weights ``(out, in)``: llm_lib's MultiHeadAttention;
- ``nn.Linear`` once on the three stacked, ``(3 out, in)``: a fused projection;
- ``torch.addmm`` with one ``(in, 3 out)`` matrix: transformers' GPT-2 (``Conv1D``).

The weights are cold, as in generation: each call reads the matrices of a
different layer out of a set much larger than the CPU's caches.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import environment, median, print_environment, report, set_threads, time_calls


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--emb-dim", type=int, default=768)
    p.add_argument("--layers", type=int, default=96,
                   help="distinct weight sets cycled through (96 x 7 MB: far beyond the caches)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="small matrices, few layers: checks the script")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    d, n = (64, 4) if args.tiny else (args.emb_dim, args.layers)
    g = torch.Generator().manual_seed(0)
    separate = [[torch.randn(d, d, generator=g) for _ in range(3)] for _ in range(n)]
    stacked = [torch.cat(ws) for ws in separate]                # (3d, d), as nn.Linear keeps it
    conv1d = [w.T.contiguous() for w in stacked]                # (d, 3d), as Conv1D keeps it
    bias = torch.zeros(3 * d)
    x = torch.randn(1, d, generator=g)
    reference = torch.cat([F.linear(x, w) for w in separate[0]], dim=-1)
    torch.testing.assert_close(F.linear(x, stacked[0]), reference)
    torch.testing.assert_close(torch.addmm(bias, x, conv1d[0]), reference, rtol=1e-4, atol=1e-4)

    variants = {
        "3 x nn.Linear, (out, in) each (llm_lib)": lambda: [F.linear(x, w) for ws in separate for w in ws],
        "1 x nn.Linear, stacked (3 out, in)": lambda: [F.linear(x, w) for w in stacked],
        "addmm, (in, 3 out) (transformers' Conv1D)": lambda: [torch.addmm(bias, x, w) for w in conv1d],
    }
    rows, first = [], None
    with torch.no_grad():
        for name, fn in variants.items():
            us = median(time_calls(fn, args.repeats, warmup=1)) / n * 1e6
            first = first or us
            rows.append([name, f"{us:.1f}", f"{first / us:.2f}x"])
    title = (f"The query, key and value projections of one token ({d} -> 3 x {d}), weights cold "
             f"(cycling through {n} layers' worth), microseconds per layer, median of {args.repeats}")
    env = environment()
    print_environment(env)
    report(title, ["product", "us per layer", "speed vs llm_lib"], rows, env, args.json, "matvec")


if __name__ == "__main__":
    main()
