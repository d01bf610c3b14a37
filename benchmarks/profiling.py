"""Where a training step's time goes: ``torch.profiler`` over a few steps, grouped into categories.

On a GPU the time counted is that of the kernels (what the GPU was busy with);
the step time measured without the profiler, minus that busy time, is the time
the GPU waited: kernel launches, Python, the optimizer's host work. On a CPU the
time counted is each PyTorch operator's own ("self") time.

Used by ``train_gpu.py --profile N`` and ``train_step_cpu.py --profile N``.
"""

from __future__ import annotations

import re

import torch
from common import markdown_table, synchronize
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# (category, pattern searched in the lower-cased kernel or operator name); the first match wins.
# Names seen: cuBLAS/CUTLASS "sm90_xmma_gemm_...", "nvjet_...", "cutlass..."; FlashAttention
# "flash_fwd_kernel", "pytorch_flash::..."; cuDNN "cudnn_generated_fort_native_sdpa..."; Inductor's
# Triton kernels "triton_poi_fused_...", "triton_red_fused__log_softmax_..."; on a CPU "aten::addmm".
# The only plain softmax in the model is attention's (the teaching path's); the loss uses log-softmax.
CATEGORIES: list[tuple[str, str]] = [
    ("attention", r"flash|fmha|attention|attn|sdpa|aten::_?softmax(_backward_data)?$|fused__softmax|masked_fill"),
    ("matrix products", r"gemm|matmul|cutlass|xmma|nvjet|cublas|aten::(mm|addmm|bmm|baddbmm|linear)\b|_mm_|addmm"),
    ("optimizer", r"adam|multi_tensor|foreach|lerp|_amp_"),
    ("loss (log-softmax, cross-entropy)", r"cross_entropy|log_softmax|nll_loss"),
    ("layer norm", r"layer_norm|layernorm"),
    ("embedding", r"embedding|index_select|index_put|gather|scatter"),
    ("dropout", r"dropout|bernoulli|philox"),
    ("other Triton kernels (fused element-wise)", r"^triton"),
    ("copies and fills", r"memcpy|memset|copy|fill|\bcat\b|clone|to_copy|contiguous"),
]
OTHER = "other (mostly element-wise)"


def categorise(name: str) -> str:
    """The category of a kernel or operator name (``other`` when no pattern matches)."""
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), OTHER)


def _category(event, cuda: bool) -> str:
    """A GPU kernel's category from its name; a CPU operator's is "optimizer" when it runs inside
    ``optimizer.step()`` (its element-wise operators look like any others), else from its name."""
    if not cuda:
        parent = event
        while parent is not None:
            if parent.name.startswith("Optimizer.step"):
                return "optimizer"
            parent = parent.cpu_parent
    return categorise(event.name)


def profile_steps(run_steps, steps: int, device: torch.device, top: int = 12) -> dict:
    """Profile ``run_steps(steps)`` and return per-step times by category and the ``top`` kernels/operators.

    Returns ``{"device_time": "kernels" | "operators", "busy_ms": ..., "categories": [[name, ms, share]],
    "top": [[name, calls, ms, share]]}``, every time per step, every share of the busy time.
    """
    if steps < 1:
        raise ValueError(f"profile at least 1 step, got {steps}")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        run_steps(steps)
        synchronize(device)
    per_name: dict[str, list[float]] = {}  # name -> [calls, microseconds]
    by_category: dict[str, float] = {}  # the same operator can count in several (sqrt: layer norm, AdamW)
    for event in prof.events():
        if event.device_type != (DeviceType.CUDA if cuda else DeviceType.CPU) or event.is_async:
            continue
        if event.name.startswith("ProfilerStep"):
            continue
        us = (event.time_range.end - event.time_range.start) if cuda else event.self_cpu_time_total
        if us <= 0:
            continue
        entry = per_name.setdefault(event.name, [0, 0.0])
        entry[0] += 1
        entry[1] += us
        category = _category(event, cuda)
        by_category[category] = by_category.get(category, 0.0) + us
    busy_us = sum(us for _, us in per_name.values()) or 1.0
    ranked = sorted(per_name.items(), key=lambda item: -item[1][1])[:top]
    return {
        "device_time": "kernels" if cuda else "operators",
        "steps": steps,
        "busy_ms": busy_us / 1000 / steps,
        "categories": [[label, us / 1000 / steps, us / busy_us]
                       for label, us in sorted(by_category.items(), key=lambda item: -item[1])],
        "top": [[name, calls / steps, us / 1000 / steps, us / busy_us] for name, (calls, us) in ranked],
    }


def _short(name: str, width: int = 70) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[:width - 3] + "..."


def profile_markdown(variant: str, result: dict) -> str:
    """Two markdown tables (categories, top kernels or operators) under a line that compares busy and step time.

    ``result`` is ``profile_steps``'s, plus ``step_ms``: the step time measured without the profiler.
    """
    busy, step_ms = result["busy_ms"], result["step_ms"]
    if result["device_time"] == "kernels":
        waited = max(step_ms - busy, 0.0)
        head = (f"**{variant}**: {step_ms:.1f} ms per step (timed without the profiler), of which the GPU's "
                f"kernels ran {busy:.1f} ms; it waited {waited:.1f} ms ({100 * waited / step_ms:.0f}%: "
                f"launch gaps, Python, host work).")
    else:
        head = (f"**{variant}**: {step_ms:.1f} ms per step (timed without the profiler); under the profiler "
                f"the operators' own time adds up to {busy:.1f} ms per step (the profiler adds overhead).")
    lines = [head + f" Over {result['steps']} profiled step(s):", ""]
    lines.append(markdown_table(["category", "ms/step", "share"],
                                [[c, f"{ms:.2f}", f"{100 * share:.1f}%"] for c, ms, share in result["categories"]]))
    lines += ["", markdown_table(["kernel" if result["device_time"] == "kernels" else "operator", "calls/step",
                                  "ms/step", "share"],
                                 [[f"`{_short(n)}`", f"{calls:g}", f"{ms:.2f}", f"{100 * share:.1f}%"]
                                  for n, calls, ms, share in result["top"]])]
    return "\n".join(lines)
