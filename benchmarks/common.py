"""Shared pieces of the benchmark scripts: the machine's description, model builders, timing, tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

# `python benchmarks/x.py` puts benchmarks/ on the path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_lib.model import GPTConfig  # noqa: E402

# A model small enough to run every benchmark in seconds: for checking the scripts, not for numbers.
TINY = GPTConfig(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=2)


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_instructions() -> str:
    """Which bfloat16 instructions the processor has (Linux ``/proc/cpuinfo`` flags), e.g. ``avx512_bf16``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) or "none"


def environment(device: str = "cpu") -> dict[str, str]:
    """Date, hardware and library versions, for the results table."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "cpu bf16 instructions": cpu_bf16_instructions(),
        "torch threads": str(torch.get_num_threads()),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = "not installed"
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
        env["cudnn"] = str(torch.backends.cudnn.version())
    return env


def print_environment(env: dict[str, str]) -> None:
    """The environment as a two-column markdown table."""
    print(markdown_table(["", ""], [[k, v] for k, v in env.items()]))
    print()


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script, as one would type it from the repository root, without ``--json``."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    if "--json" in args:
        i = args.index("--json")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--json=")]
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return prefix + " ".join(["python", f"benchmarks/{Path(argv[0]).name}", *args])


def report(title: str, headers: list[str], rows: list[list], env: dict[str, str], json_path: str | None,
           benchmark: str, profiles: dict[str, dict] | None = None) -> None:
    """Print ``title`` and the results table; with ``json_path``, also save them for ``benchmarks/report.py``.

    The saved record holds the command, the environment, the title and the table's cells as printed,
    so that the README (``python benchmarks/report.py``) and chapter 36 show exactly what was measured.
    ``profiles`` maps a row's name to ``profiling.profile_steps``'s result plus its ``step_ms``.
    """
    rows = [[str(c) for c in row] for row in rows]
    print(title + ":\n")
    print(markdown_table(headers, rows))
    if profiles:
        from profiling import profile_markdown

        print("\nWhere the time goes:\n")
        for variant, result in profiles.items():
            print(profile_markdown(variant, result) + "\n")
    if json_path:
        record = {"benchmark": benchmark, "command": command_line(), "environment": env, "title": title,
                  "columns": headers, "rows": rows}
        if profiles:
            record["profiles"] = profiles
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        print(f"\nsaved to {json_path}")


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (None: PyTorch's default)."""
    if threads:
        torch.set_num_threads(threads)


def synchronize(device) -> None:
    """Wait for queued GPU work, so that a host clock measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, repeats: int, warmup: int, device="cpu") -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def hf_config(cfg: GPTConfig, vocab_size: int | None = None, tied: bool | None = None,
              attn_implementation: str = "sdpa"):
    """A ``transformers.GPT2Config`` of the same shape as ``cfg`` (dropout, tying and all)."""
    import transformers

    return transformers.GPT2Config(
        vocab_size=vocab_size or cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=cfg.drop_rate, embd_pdrop=cfg.drop_rate,
        attn_pdrop=cfg.drop_rate, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        tie_word_embeddings=cfg.tie_weights if tied is None else tied,
        attn_implementation=attn_implementation,
    )


class LogitsOnly(torch.nn.Module):
    """A Hugging Face causal LM that returns its logits tensor, so it trains like ``GPTModel``."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits
