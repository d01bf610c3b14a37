"""The benchmark scripts run end to end on a tiny model (their timings are not checked: see benchmarks/README.md)."""

import json
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
                                    "llm_lib, KV cache + fused kernels",
                                    "llm_lib, KV cache + fused kernels + input-major weights",
                                    "transformers GPT2LMHeadModel.generate (sdpa, cache)"]
    assert all(r[-1] == "yes" for r in rows)  # the cache and Hugging Face agree with the uncached path


def test_bpe_benchmark_learns_the_same_merges_and_ids_every_way():
    rows = _table_rows(_run("bpe.py", "--tiny"), "task")
    assert [(r[0], r[-1]) for r in rows if "Hugging Face" not in r[1]] == [
        ("train", "(reference)"), ("train", "yes"),
        ("encode", "(reference)"), ("encode", "yes"), ("encode", "yes"), ("encode", "yes")]


def test_matvec_benchmark_checks_the_three_products_agree_and_times_each():
    rows = _table_rows(_run("matvec_layout.py", "--tiny", "--repeats", "1"), "product")
    assert [r[0].split(",")[0] for r in rows] == ["3 x nn.Linear", "1 x nn.Linear", "addmm"]
    assert rows[0][2] == "1.00x" and all(float(r[1]) > 0 for r in rows)


def test_cpu_training_benchmark_reports_every_variant():
    rows = _table_rows(_run("train_step_cpu.py", "--tiny", "--steps", "1", "--warmup", "0"), "variant")
    assert [r[0] for r in rows] == ["teaching", "fast fp32", "fast bf16", "HF fp32", "HF bf16"]
    for r in rows:
        assert float(r[1]) > 0 and 9 < float(r[-1]) < 12  # a loss near ln(50,257) = 10.8 at the start


def test_gpu_benchmark_runs_on_the_cpu():
    out = _run("train_gpu.py", "--device", "cpu", "--tiny", "--batch", "2", "--seq", "32", "--steps", "1",
               "--warmup", "1", "--no-compile", "--attention-backend", "math", "--profile", "1")
    rows = _table_rows(out, "variant")
    assert [r[0] for r in rows] == ["llm_lib fast", "HF"]
    assert all(float(r[3].replace(",", "")) > 0 for r in rows)  # tokens/s
    assert "attention backend math" in out
    assert out.count("| category | ms/step | share |") == 2  # a profile for each row


def test_profile_groups_the_step_time_into_categories(tmp_path):
    out_file = tmp_path / "run.json"
    _run("train_step_cpu.py", "--tiny", "--steps", "1", "--warmup", "1", "--variants", "fast fp32", "HF fp32",
         "--profile", "1", "--json", str(out_file))
    record = json.loads(out_file.read_text())
    assert record["command"].startswith("OMP_NUM_THREADS=1 python benchmarks/train_step_cpu.py --tiny")
    assert "--json" not in record["command"]
    assert [r[0] for r in record["rows"]] == ["fast fp32", "HF fp32"]
    for variant, profile in record["profiles"].items():
        categories = {name: ms for name, ms, _ in profile["categories"]}
        assert abs(sum(share for *_, share in profile["categories"]) - 1) < 1e-6, variant
        assert abs(sum(categories.values()) - profile["busy_ms"]) < 1e-6 * profile["busy_ms"] + 1e-9, variant
        # the head's matrix products and AdamW (found as the operators under optimizer.step) are always there
        assert categories["matrix products"] > 0 and categories["optimizer"] > 0, categories
        assert profile["top"][0][2] >= profile["top"][-1][2]  # sorted, most expensive first


@pytest.mark.parametrize(("name", "category"), [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matrix products"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matrix products"),
    ("aten::addmm", "matrix products"),
    ("triton_tem_fused_addmm_0", "matrix products"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4> >", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", "attention"),
    ("aten::_softmax", "attention"),
    ("triton_red_fused__log_softmax_nll_loss_forward_3", "loss (log-softmax, cross-entropy)"),
    ("aten::_log_softmax_backward_data", "loss (log-softmax, cross-entropy)"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("triton_per_fused_native_layer_norm_backward_7", "layer norm"),
    ("aten::embedding_dense_backward", "embedding"),
    ("triton_poi_fused_gelu_mul_5", "other Triton kernels (fused element-wise)"),
    ("Memset (Device)", "copies and fills"),
    ("aten::gelu", "other (mostly element-wise)"),
    ("aten::bernoulli_", "dropout"),
])
def test_kernel_and_operator_names_fall_into_the_right_category(name, category):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from profiling import categorise
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert categorise(name) == category


def test_readme_and_chapter_35_show_the_saved_results():
    """Every table of results in the README and chapter 36 is what benchmarks/results/*.json holds."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_report_notices_a_hand_edited_table(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert report.updated_readme(text) == text
    results = next((ROOT / "benchmarks" / "results").glob("*.json"))
    record = json.loads(results.read_text())
    edited = text.replace(f"| {' | '.join(record['rows'][0])} |", f"| {' | '.join(record['rows'][0][:-1])} | ? |")
    assert edited != text and report.updated_readme(edited) == text
