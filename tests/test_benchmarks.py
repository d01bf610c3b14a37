"""The benchmark scripts run end to end on a tiny model (their timings are not checked: see benchmarks/README.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """Rows of the markdown table whose header starts with ``first_cell``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_generation_benchmark_gives_the_same_tokens_every_way():
    rows = _table_rows(_run("generation.py", "--tiny", "--new-tokens", "12", "--repeats", "1"), "implementation")
    assert [r[0] for r in rows] == ["llm_lib, no cache (teaching path)", "llm_lib, KV cache",
                                    "llm_lib, KV cache + fused attention",
                                    "transformers GPT2LMHeadModel.generate (sdpa, cache)"]
    assert all(r[-1] == "yes" for r in rows)  # the cache and Hugging Face agree with the uncached path


def test_cpu_training_benchmark_reports_every_variant():
    rows = _table_rows(_run("train_step_cpu.py", "--tiny", "--steps", "1", "--warmup", "0"), "variant")
    assert [r[0] for r in rows] == ["teaching", "fast fp32", "fast bf16", "HF fp32", "HF bf16"]
    for r in rows:
        assert float(r[1]) > 0 and 9 < float(r[-1]) < 12  # a loss near ln(50,257) = 10.8 at the start


def test_gpu_benchmark_runs_on_the_cpu():
    out = _run("train_gpu.py", "--device", "cpu", "--tiny", "--batch", "2", "--seq", "32", "--steps", "1",
               "--warmup", "1", "--no-compile")
    rows = _table_rows(out, "variant")
    assert [r[0] for r in rows] == ["llm_lib fast", "HF"]
    assert all(float(r[3].replace(",", "")) > 0 for r in rows)  # tokens/s
