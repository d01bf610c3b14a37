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
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch

from .data_sources import DataIntegrityError
from .model import GPT2_SIZES, GPTConfig, GPTModel, load_state_dict_checked

__all__ = [
    "HF_REPOS",
    "download_gpt2",
    "hub_file",
    "export_gpt2_state_dict",
    "gpt2_from_pretrained",
    "gpt2_tensor_shapes",
    "load_gpt2_weights",
    "verify_gpt2_file",
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
    """The inverse of ``load_gpt2_weights``: ``model``'s weights in the Hugging Face GPT-2 layout.

    A model without query/key/value biases gets zero ``c_attn.bias`` (the layout
    has them). ``lm_head.weight`` is included only when the output head is not
    tied to ``tok_emb`` (a tied head is implied by ``wte``, as in the hub's files).
    """
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
    d, v = cfg.emb_dim, cfg.vocab_size
    shapes = {"wte.weight": (v, d), "wpe.weight": (cfg.context_length, d)}
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (d,), h + "ln_1.bias": (d,),
            h + "attn.c_attn.weight": (d, 3 * d), h + "attn.c_attn.bias": (3 * d,),
            h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,),
            h + "ln_2.weight": (d,), h + "ln_2.bias": (d,),
            h + "mlp.c_fc.weight": (d, 4 * d), h + "mlp.c_fc.bias": (4 * d,),
            h + "mlp.c_proj.weight": (4 * d, d), h + "mlp.c_proj.bias": (d,),
        })
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


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
# Downloading OpenAI's checkpoints from the Hugging Face hub
# ----------------------------------------------------------------------------------

HF_URL = "https://huggingface.co"
PROBE_TIMEOUT_S = 5.0  # how long to wait for the hub to answer before calling the machine offline


def _hub_downloader():
    """``huggingface_hub.hf_hub_download`` when that package is installed, else None."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    return hf_hub_download


def _hub_cached(repo: str, cache_dir, filename: str = "model.safetensors") -> Path | None:
    """The hub's cached ``filename`` of ``repo``, if huggingface_hub has one, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return HF_URL
    return constants.ENDPOINT.rstrip("/")


def _check_reachable(site: str, file_url: str, timeout: float | None = None) -> None:
    """Raise ``ConnectionError`` within ``timeout`` (default ``PROBE_TIMEOUT_S``) seconds unless ``site`` answers.

    The hub's own client retries for about half a minute before giving up; this
    probe (in a thread, so a hanging DNS lookup cannot stall it) tells an
    offline machine at once.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    outcome: list[BaseException | None] = []

    def probe():
        request = urllib.request.Request(site + "/", method="HEAD", headers={"User-Agent": "llm_lib"})
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # an error status is still an answer: the network works
        except Exception as exc:
            outcome.append(exc)
            return
        outcome.append(None)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return
    reason = outcome[0] if outcome else f"no answer within {timeout:g} s"
    raise ConnectionError(
        f"could not download {file_url}: {site} cannot be reached ({reason}). This needs a network "
        f"connection; on an offline machine, copy the file over from one that has it and pass its "
        f"path to load_gpt2_weights"
    )


def _check_online_allowed(file_url: str) -> None:
    """Raise ``ConnectionError`` if ``HF_HUB_OFFLINE`` (the hub's own switch) forbids downloads."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}:
        raise ConnectionError(f"could not download {file_url}: HF_HUB_OFFLINE is set, and the file is "
                              f"not in the cache")


def _check_hub_sha256(path: Path) -> None:
    """Hash a file just fetched by huggingface_hub: its cache names large files by their SHA-256."""
    from .data_sources import sha256_of

    blob = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", blob.name) and (actual := sha256_of(blob)) != blob.name:
        raise DataIntegrityError(
            f"{path} does not match the SHA-256 the hub gave for it: expected {blob.name}, got "
            f"{actual}; delete {blob} and download it again"
        )


def hub_file(repo: str, filename: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``filename`` in the Hugging Face hub repository ``repo``, downloaded once.

    With ``huggingface_hub`` installed, the file goes to its cache (or
    ``cache_dir``) with its progress bar, and a fresh download of a large file is
    checked against the SHA-256 the hub gives; otherwise plain HTTPS with a
    progress bar, the byte count checked against the server's Content-Length.
    Offline, or with ``HF_HUB_OFFLINE=1`` and no cached copy, raises
    ``ConnectionError`` within seconds.
    """
    hf_hub_download = _hub_downloader()
    if hf_hub_download is not None:
        path = _hub_cached(repo, cache_dir, filename)
        if path is None:
            endpoint = _hub_endpoint()
            _check_online_allowed(f"{endpoint}/{repo}/resolve/main/{filename}")
            _check_reachable(endpoint, f"{endpoint}/{repo}/resolve/main/{filename}")
            try:
                path = Path(hf_hub_download(repo, filename, cache_dir=cache_dir))
            except Exception as exc:  # the hub raises several types for "no network"
                raise ConnectionError(
                    f"could not download {repo}/{filename} from the Hugging Face hub ({exc}); "
                    f"this needs a network connection"
                ) from exc
            _check_hub_sha256(path)
        return path

    from .data_sources import cache_dir as default_cache_dir
    from .data_sources import download

    url = f"{HF_URL}/{repo}/resolve/main/{filename}"
    path = Path(cache_dir or default_cache_dir() / "hub") / repo / filename
    if not path.is_file():
        _check_online_allowed(url)
        _check_reachable(HF_URL, url)
        download(url, path, timeout=60, desc=f"{repo}/{filename}")  # checks the byte count
    return path


def download_gpt2(size: str = "small", cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of OpenAI's GPT-2 ``model.safetensors`` for ``size``, downloaded from the Hugging Face hub once.

    The download is ``hub_file``'s; the file's tensor names and shapes must
    then match ``size`` (``verify_gpt2_file``), or a fresh download is deleted.
    """
    if size not in HF_REPOS:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {list(GPT2_SIZES)}")
    path = hub_file(HF_REPOS[size], "model.safetensors", cache_dir)
    try:
        return verify_gpt2_file(path, size)
    except DataIntegrityError:
        if _hub_downloader() is None:
            path.unlink()  # a fresh plain-HTTPS download that is not GPT-2 `size`: do not keep it
        raise


def gpt2_from_pretrained(size: str = "small", cache_dir: str | os.PathLike | None = None,
                         **overrides) -> GPTModel:
    """OpenAI's GPT-2 ``size`` as a ``GPTModel`` in eval mode (qkv_bias=True, context 1024, weights loaded).

    ``overrides`` change other config fields, e.g. ``drop_rate=0.0`` for finetuning.
    """
    path = download_gpt2(size, cache_dir)
    model = GPTModel(GPTConfig.gpt2(size, **{"qkv_bias": True, **overrides}))
    load_gpt2_weights(model, path)
    return model.eval()
