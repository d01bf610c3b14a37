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

``download_gpt2(size)`` fetches OpenAI's ``model.safetensors`` from the Hugging
Face hub once (cached), fails within seconds when there is no network, and
checks that the file holds every tensor of that GPT-2 size with the right shape
(``verify_gpt2_file``); ``gpt2_from_pretrained(size)`` returns the loaded model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hub
from .data_sources import DataIntegrityError
from .fast import FastGPTModel
from .hub import hub_file  # noqa: F401  (importable from here, as before)
from .model import GPT2_SIZES, GPTConfig, load_state_dict_checked

__all__ = [
    "HF_REPOS",
    "download_gpt2",
    "hub_file",
    "export_gpt2_state_dict",
    "gpt2_from_pretrained",
    "gpt2_tensor_shapes",
    "load_gpt2_weights",
    "verify_gpt2_file",
    "TensorName",
    "TOP_TENSORS",
    "BLOCK_TENSORS",
]

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


@dataclass(frozen=True)
class TensorName:
    """One tensor of GPT-2 in both layouts: its Hugging Face name and ours, and how one becomes the other.

    ``ours`` lists several names when one Hugging Face tensor holds several of
    ours side by side (``c_attn``: the query, key and value projections, cut
    along our first dimension). ``transposed``: OpenAI's "Conv1D" stores
    ``(in, out)`` where ``nn.Linear`` keeps ``(out, in)``. ``shape`` gives the
    Hugging Face shape from (emb_dim d, vocabulary v, context length c).
    """

    hf: str
    ours: tuple[str, ...]
    transposed: bool
    shape: Callable[[int, int, int], tuple[int, ...]]


_QKV = ("att.W_query", "att.W_key", "att.W_value")
# Names inside the model; a block's names are relative to "h.N." and "trf_blocks.N.".
TOP_TENSORS = (
    TensorName("wte.weight", ("tok_emb.weight",), False, lambda d, v, c: (v, d)),
    TensorName("wpe.weight", ("pos_emb.weight",), False, lambda d, v, c: (c, d)),
    TensorName("ln_f.weight", ("final_norm.scale",), False, lambda d, v, c: (d,)),
    TensorName("ln_f.bias", ("final_norm.shift",), False, lambda d, v, c: (d,)),
)
BLOCK_TENSORS = (
    TensorName("ln_1.weight", ("norm1.scale",), False, lambda d, v, c: (d,)),
    TensorName("ln_1.bias", ("norm1.shift",), False, lambda d, v, c: (d,)),
    TensorName("ln_2.weight", ("norm2.scale",), False, lambda d, v, c: (d,)),
    TensorName("ln_2.bias", ("norm2.shift",), False, lambda d, v, c: (d,)),
    TensorName("attn.c_attn.weight", tuple(f"{n}.weight" for n in _QKV), True, lambda d, v, c: (d, 3 * d)),
    TensorName("attn.c_attn.bias", tuple(f"{n}.bias" for n in _QKV), False, lambda d, v, c: (3 * d,)),
    TensorName("attn.c_proj.weight", ("att.out_proj.weight",), True, lambda d, v, c: (d, d)),
    TensorName("attn.c_proj.bias", ("att.out_proj.bias",), False, lambda d, v, c: (d,)),
    TensorName("mlp.c_fc.weight", ("ff.layers.0.weight",), True, lambda d, v, c: (d, 4 * d)),
    TensorName("mlp.c_fc.bias", ("ff.layers.0.bias",), False, lambda d, v, c: (4 * d,)),
    TensorName("mlp.c_proj.weight", ("ff.layers.2.weight",), True, lambda d, v, c: (4 * d, d)),
    TensorName("mlp.c_proj.bias", ("ff.layers.2.bias",), False, lambda d, v, c: (d,)),
)


def _tensor_names(n_layers: int) -> list[tuple[str, tuple[str, ...], TensorName]]:
    """``(hf name, our names, row)`` for every tensor of a GPT-2 with ``n_layers`` blocks."""
    rows = [(t.hf, t.ours, t) for t in TOP_TENSORS]
    for i in range(n_layers):
        rows += [(f"h.{i}.{t.hf}", tuple(f"trf_blocks.{i}.{o}" for o in t.ours), t) for t in BLOCK_TENSORS]
    return rows


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
    ours = {"out_head.weight": hf.get("lm_head.weight", hf["wte.weight"])}  # a separate lm_head, if any, wins
    for hf_name, our_names, row in _tensor_names(n_blocks):
        if hf_name not in hf:
            if hf_name.endswith("attn.c_attn.bias"):
                continue  # a model with qkv_bias=True then reports these biases as missing
            raise ValueError(f"the GPT-2 state dict has no {hf_name!r}")
        tensor = hf[hf_name].T if row.transposed else hf[hf_name]
        ours.update(zip(our_names, tensor.chunk(len(our_names), dim=0), strict=True))
    load_state_dict_checked(model, {k: v.contiguous() for k, v in ours.items()},
                            source="GPT-2 state dict")


@torch.no_grad()
def export_gpt2_state_dict(model, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """The inverse of ``load_gpt2_weights``: ``model``'s weights in the Hugging Face GPT-2 layout.

    A model without query/key/value biases gets zero ``c_attn.bias`` (the layout
    has them). ``lm_head.weight`` is included only when the output head is not
    tied to ``tok_emb`` (a tied head is implied by ``wte``, as in the hub's files).
    """
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = model.cfg
    out = {}
    for hf_name, our_names, row in _tensor_names(cfg.n_layers):
        if our_names[0] not in sd:  # no query/key/value biases: the layout has them, as zeros
            out[hf_name] = torch.zeros(row.shape(cfg.emb_dim, cfg.vocab_size, cfg.context_length))
            continue
        tensor = torch.cat([sd[name] for name in our_names], dim=0)
        out[hf_name] = tensor.T if row.transposed else tensor
    result = {prefix + k: v.contiguous() for k, v in out.items()}
    if model.out_head.weight is not model.tok_emb.weight:
        result["lm_head.weight"] = sd["out_head.weight"].contiguous()
    return result


# ----------------------------------------------------------------------------------
# What a GPT-2 checkpoint must hold, and checking a file against it
# ----------------------------------------------------------------------------------


def _config_of(size_or_cfg: str | GPTConfig) -> tuple[GPTConfig, str]:
    """The configuration for a size name (or a given ``GPTConfig``) and words that name it in errors."""
    if isinstance(size_or_cfg, GPTConfig):
        c = size_or_cfg
        return c, (f"a GPT-2 with vocab_size={c.vocab_size}, context_length={c.context_length}, "
                   f"emb_dim={c.emb_dim}, n_layers={c.n_layers}")
    if size_or_cfg not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {size_or_cfg!r}; choose one of {list(GPT2_SIZES)}")
    return GPTConfig.gpt2(size_or_cfg), f"GPT-2 {size_or_cfg}"


def gpt2_tensor_shapes(size_or_cfg: str | GPTConfig = "small") -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter in a Hugging Face GPT-2 checkpoint (names without ``transformer.``).

    ``size_or_cfg`` is "small", "medium", "large", "xl" or a ``GPTConfig``. The
    attention always has biases (``c_attn.bias``), as in OpenAI's checkpoints.
    """
    cfg, _ = _config_of(size_or_cfg)
    return {hf_name: row.shape(cfg.emb_dim, cfg.vocab_size, cfg.context_length)
            for hf_name, _, row in _tensor_names(cfg.n_layers)}


def verify_gpt2_file(path: str | os.PathLike, size_or_cfg: str | GPTConfig = "small") -> Path:
    """Check that the safetensors file ``path`` holds GPT-2 ``size_or_cfg``: every tensor, with its shape.

    Reads only the file's header (names and shapes), so it is quick even for
    GPT-2 xl. Raises ``DataIntegrityError`` naming the first missing or
    mis-shaped tensor, or saying the file is unreadable (truncated, not
    safetensors). Extra buffers such as ``h.N.attn.bias`` (OpenAI's causal
    mask) are allowed; extra transformer blocks are not. Returns ``path``.
    """
    from safetensors import safe_open

    cfg, label = _config_of(size_or_cfg)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GPT-2 weights at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for a bad header
        raise DataIntegrityError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt: "
            f"delete it and download it again"
        ) from None
    found = {key.removeprefix("transformer."): shape for key, shape in found.items()}
    expected = gpt2_tensor_shapes(cfg)
    expected_head = expected["wte.weight"]
    for name, shape in [*expected.items(), ("lm_head.weight", expected_head)]:
        if name not in found:
            if name == "lm_head.weight":
                continue  # optional: GPT-2's head is tied to wte
            raise DataIntegrityError(f"{path} is not {label}: it has no tensor {name!r}")
        if found[name] != shape:
            raise DataIntegrityError(
                f"{path} is not {label}: {name} has shape {found[name]}, expected {shape}"
            )
    blocks = {int(m.group(1)) for key in found if (m := re.match(r"h\.(\d+)\.", key))}
    if extra := sorted(blocks - set(range(cfg.n_layers))):
        raise DataIntegrityError(
            f"{path} is not {label}: it has a block h.{extra[0]}, but {label} has "
            f"{cfg.n_layers} blocks (h.0 to h.{cfg.n_layers - 1})"
        )
    return path


# ----------------------------------------------------------------------------------
# OpenAI's checkpoints from the Hugging Face hub
# ----------------------------------------------------------------------------------


def download_gpt2(size: str = "small", cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of OpenAI's GPT-2 ``model.safetensors`` for ``size``, downloaded from the Hugging Face hub once.

    The download is ``hub_file``'s; the file's tensor names and shapes must
    then match ``size`` (``verify_gpt2_file``), or a fresh download is deleted.
    """
    if size not in HF_REPOS:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {list(GPT2_SIZES)}")
    path = hub.hub_file(HF_REPOS[size], "model.safetensors", cache_dir)
    try:
        return verify_gpt2_file(path, size)
    except DataIntegrityError:
        if hub._hub_downloader() is None:
            path.unlink()  # a fresh plain-HTTPS download that is not GPT-2 `size`: do not keep it
        raise


def gpt2_from_pretrained(size: str = "small", cache_dir: str | os.PathLike | None = None,
                         **overrides) -> FastGPTModel:
    """OpenAI's GPT-2 ``size`` as a ``FastGPTModel`` in eval mode (qkv_bias=True, context 1024, weights loaded).

    ``overrides`` change other config fields, e.g. ``drop_rate=0.0`` for finetuning.
    """
    path = download_gpt2(size, cache_dir)
    model = FastGPTModel(GPTConfig.gpt2(size, **{"qkv_bias": True, **overrides}))
    load_gpt2_weights(model, path)
    return model.eval()
