"""OpenAI's GPT-2 weights in the Hugging Face layout, mapped into ``GPTModel`` (chapter 31).

The Hugging Face checkpoint names tensors after OpenAI's original code:

====================================  ==============================================
Hugging Face (``transformer.`` optional)   ``GPTModel``
====================================  ==============================================
``wte.weight``                        ``tok_emb.weight`` (and ``out_head.weight``: tied)
``wpe.weight``                        ``pos_emb.weight``
``h.N.ln_1.weight`` / ``.bias``       ``trf_blocks.N.norm1.scale`` / ``.shift``
``h.N.attn.c_attn.weight`` (d, 3d)    ``W_query``, ``W_key``, ``W_value`` (split, transposed)
``h.N.attn.c_proj.weight``            ``trf_blocks.N.att.out_proj.weight`` (transposed)
``h.N.ln_2.*``                        ``trf_blocks.N.norm2.*``
``h.N.mlp.c_fc.weight`` (d, 4d)       ``trf_blocks.N.ff.layers.0.weight`` (transposed)
``h.N.mlp.c_proj.weight`` (4d, d)     ``trf_blocks.N.ff.layers.2.weight`` (transposed)
``ln_f.weight`` / ``.bias``           ``final_norm.scale`` / ``.shift``
====================================  ==============================================

OpenAI stored linear layers as "Conv1D" with weights ``(in, out)``;
``nn.Linear`` keeps ``(out, in)``, hence the transposes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .model import GPT2_SIZES, load_state_dict_checked

__all__ = ["load_gpt2_weights", "export_gpt2_state_dict", "download_gpt2", "HF_REPOS"]

HF_REPOS = {
    "small": "openai-community/gpt2",
    "medium": "openai-community/gpt2-medium",
    "large": "openai-community/gpt2-large",
    "xl": "openai-community/gpt2-xl",
}


def _read_state_dict(source) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no GPT-2 weights at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _strip_prefix(hf: dict) -> dict:
    # Files from the hub name "h.0...", GPT2LMHeadModel.state_dict() names "transformer.h.0...".
    out = {}
    for key, tensor in hf.items():
        out[key.removeprefix("transformer.")] = tensor
    return out


def _block_map(i: int, hf: dict, d: int) -> dict[str, torch.Tensor]:
    h = f"h.{i}."
    ours = f"trf_blocks.{i}."
    q_w, k_w, v_w = hf[h + "attn.c_attn.weight"].T.split(d, dim=0)
    mapped = {
        ours + "norm1.scale": hf[h + "ln_1.weight"],
        ours + "norm1.shift": hf[h + "ln_1.bias"],
        ours + "att.W_query.weight": q_w,
        ours + "att.W_key.weight": k_w,
        ours + "att.W_value.weight": v_w,
        ours + "att.out_proj.weight": hf[h + "attn.c_proj.weight"].T,
        ours + "att.out_proj.bias": hf[h + "attn.c_proj.bias"],
        ours + "norm2.scale": hf[h + "ln_2.weight"],
        ours + "norm2.shift": hf[h + "ln_2.bias"],
        ours + "ff.layers.0.weight": hf[h + "mlp.c_fc.weight"].T,
        ours + "ff.layers.0.bias": hf[h + "mlp.c_fc.bias"],
        ours + "ff.layers.2.weight": hf[h + "mlp.c_proj.weight"].T,
        ours + "ff.layers.2.bias": hf[h + "mlp.c_proj.bias"],
    }
    if h + "attn.c_attn.bias" in hf:
        q_b, k_b, v_b = hf[h + "attn.c_attn.bias"].split(d)
        mapped.update({ours + "att.W_query.bias": q_b, ours + "att.W_key.bias": k_b,
                       ours + "att.W_value.bias": v_b})
    return mapped


@torch.no_grad()
def load_gpt2_weights(model, state_dict_or_path) -> None:
    """Copy GPT-2 weights in the Hugging Face layout (a state dict or a .safetensors/.bin path) into ``model``.

    The model must be built with ``qkv_bias=True`` (OpenAI's checkpoints have
    query/key/value biases) and the checkpoint's sizes; a mismatch names the tensor.
    """
    hf = _strip_prefix(_read_state_dict(state_dict_or_path))
    if "wte.weight" not in hf:
        raise ValueError("not a GPT-2 state dict: no 'wte.weight' (or 'transformer.wte.weight') key")
    cfg = model.cfg
    n_blocks = 1 + max((int(m.group(1)) for k in hf if (m := re.match(r"h\.(\d+)\.", k))),
                       default=-1)
    if n_blocks != cfg.n_layers:
        raise ValueError(f"the checkpoint has {n_blocks} transformer blocks but the model has "
                         f"n_layers={cfg.n_layers}")
    if "h.0.attn.c_attn.bias" in hf and not cfg.qkv_bias:
        raise ValueError("GPT-2 checkpoints carry query/key/value biases (h.N.attn.c_attn.bias); "
                         "build the model with qkv_bias=True")
    d = hf["wte.weight"].shape[1]
    if d != cfg.emb_dim:
        raise ValueError(f"the checkpoint's wte.weight has embedding size {d}, the model's "
                         f"emb_dim is {cfg.emb_dim}")
    ours = {
        "tok_emb.weight": hf["wte.weight"],
        "pos_emb.weight": hf["wpe.weight"],
        "final_norm.scale": hf["ln_f.weight"],
        "final_norm.shift": hf["ln_f.bias"],
        # GPT-2 ties its output head to the token embedding; a separate lm_head, if present, wins.
        "out_head.weight": hf.get("lm_head.weight", hf["wte.weight"]),
    }
    for i in range(n_blocks):
        ours.update(_block_map(i, hf, d))
    load_state_dict_checked(model, {k: v.contiguous() for k, v in ours.items()},
                            source="GPT-2 state dict")


@torch.no_grad()
def export_gpt2_state_dict(model, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """The inverse of ``load_gpt2_weights``: ``model``'s weights in the Hugging Face GPT-2 layout."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = model.cfg
    out = {
        "wte.weight": sd["tok_emb.weight"],
        "wpe.weight": sd["pos_emb.weight"],
        "ln_f.weight": sd["final_norm.scale"],
        "ln_f.bias": sd["final_norm.shift"],
    }
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        att = b + "att."
        out[h + "ln_1.weight"], out[h + "ln_1.bias"] = sd[b + "norm1.scale"], sd[b + "norm1.shift"]
        out[h + "ln_2.weight"], out[h + "ln_2.bias"] = sd[b + "norm2.scale"], sd[b + "norm2.shift"]
        out[h + "attn.c_attn.weight"] = torch.cat(
            [sd[att + f"W_{n}.weight"] for n in ("query", "key", "value")], dim=0).T
        if cfg.qkv_bias:
            out[h + "attn.c_attn.bias"] = torch.cat(
                [sd[att + f"W_{n}.bias"] for n in ("query", "key", "value")])
        else:
            out[h + "attn.c_attn.bias"] = torch.zeros(3 * cfg.emb_dim)
        out[h + "attn.c_proj.weight"] = sd[att + "out_proj.weight"].T
        out[h + "attn.c_proj.bias"] = sd[att + "out_proj.bias"]
        out[h + "mlp.c_fc.weight"] = sd[b + "ff.layers.0.weight"].T
        out[h + "mlp.c_fc.bias"] = sd[b + "ff.layers.0.bias"]
        out[h + "mlp.c_proj.weight"] = sd[b + "ff.layers.2.weight"].T
        out[h + "mlp.c_proj.bias"] = sd[b + "ff.layers.2.bias"]
    result = {prefix + k: v.contiguous() for k, v in out.items()}
    result["lm_head.weight"] = sd["out_head.weight"].contiguous()
    return result


HF_URL = "https://huggingface.co"


def _hub_downloader():
    """``huggingface_hub.hf_hub_download`` when that package is installed, else None."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    return hf_hub_download


def download_gpt2(size: str = "small", cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of OpenAI's GPT-2 ``model.safetensors`` for ``size``, downloaded from the Hugging Face hub once.

    Uses ``huggingface_hub`` when installed (it checks the file's SHA-256);
    otherwise plain HTTPS with the download's size checked. Offline, raises a
    ``ConnectionError`` that says where to put the file by hand.
    """
    if size not in HF_REPOS:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {list(GPT2_SIZES)}")
    repo = HF_REPOS[size]
    hf_hub_download = _hub_downloader()
    if hf_hub_download is not None:
        try:
            return Path(hf_hub_download(repo, "model.safetensors", cache_dir=cache_dir))
        except Exception as exc:  # the hub raises several types for "no network"
            raise ConnectionError(
                f"could not download {repo}/model.safetensors from the Hugging Face hub ({exc}); "
                f"this needs a network connection"
            ) from exc
    from .data_sources import cache_dir as default_cache_dir
    from .data_sources import download

    dest = Path(cache_dir or default_cache_dir() / "gpt2-weights") / repo / "model.safetensors"
    if not dest.is_file():
        download(f"{HF_URL}/{repo}/resolve/main/model.safetensors", dest,
                 timeout=60, desc=f"{repo} weights")
    return dest
