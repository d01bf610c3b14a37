"""GPT-2's weights: the checkpoint's expected tensors, verified files, downloads, round trips through transformers.

test_model.py compares GPTModel's logits with transformers' GPT-2 for state dicts
and files made by transformers; here: tied heads, models without qkv biases (chapter
28's), files written by ``save_pretrained`` and read by ``from_pretrained``, greedy
generation, and everything about downloading and checking a checkpoint file.
"""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

from llm_lib import hub, weights
from llm_lib.data_sources import DataIntegrityError, sha256_of
from llm_lib.generate import generate_text_simple
from llm_lib.model import GPT2_SIZES, GPTConfig, GPTModel
from llm_lib.weights import export_gpt2_state_dict, gpt2_tensor_shapes, load_gpt2_weights, verify_gpt2_file

TINY = GPTConfig(vocab_size=97, context_length=32, emb_dim=48, n_heads=4, n_layers=2,
                 drop_rate=0.0, qkv_bias=True)


def _ids(batch=2, tokens=12):
    return torch.randint(0, TINY.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))


def _tiny_file(path, cfg=TINY, edit=None, **model_changes):
    """A safetensors file of a seeded tiny GPTModel in the hub's layout (no prefix), optionally edited."""
    torch.manual_seed(5)
    sd = export_gpt2_state_dict(GPTModel(cfg.replace(**model_changes)), prefix="")
    if edit is not None:
        edit(sd)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


# ---------------------------------------------------------------------------------
# The expected tensors and verify_gpt2_file
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", list(GPT2_SIZES))
def test_expected_shapes_add_up_to_the_parameter_count(size):
    shapes = gpt2_tensor_shapes(size)
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == GPTConfig.gpt2(size, qkv_bias=True).num_parameters(tied=True)
    emb_dim, _, n_layers = GPT2_SIZES[size]
    assert shapes["wte.weight"] == (50257, emb_dim) and shapes["wpe.weight"] == (1024, emb_dim)
    assert shapes[f"h.{n_layers - 1}.attn.c_attn.weight"] == (emb_dim, 3 * emb_dim)  # Conv1D: (in, out)
    assert f"h.{n_layers}.ln_1.weight" not in shapes


def test_expected_shapes_match_a_transformers_model():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=TINY.vocab_size, n_positions=TINY.context_length, n_embd=TINY.emb_dim,
        n_layer=TINY.n_layers, n_head=TINY.n_heads))
    params = {k.removeprefix("transformer."): tuple(v.shape) for k, v in hf.named_parameters()}
    assert params == gpt2_tensor_shapes(TINY)  # lm_head is tied, so named_parameters() omits it


def test_verify_accepts_an_exported_model(tmp_path):
    untied = _tiny_file(tmp_path / "untied.safetensors")
    assert verify_gpt2_file(untied, TINY) == untied
    # with the "transformer." prefix, a causal-mask buffer and no qkv biases in the model
    torch.manual_seed(5)
    sd = export_gpt2_state_dict(GPTModel(TINY.replace(qkv_bias=False, tie_weights=True)))
    sd["transformer.h.0.attn.bias"] = torch.ones(1, 1, TINY.context_length, TINY.context_length)
    save_file(sd, str(tmp_path / "prefixed.safetensors"))
    verify_gpt2_file(tmp_path / "prefixed.safetensors", TINY)


def test_verify_names_the_first_missing_tensor(tmp_path):
    path = _tiny_file(tmp_path / "m.safetensors", edit=lambda sd: sd.pop("h.1.mlp.c_fc.bias"))
    with pytest.raises(DataIntegrityError, match=r"has no tensor 'h.1.mlp.c_fc.bias'"):
        verify_gpt2_file(path, TINY)


def test_verify_names_a_mis_shaped_tensor(tmp_path):
    path = _tiny_file(tmp_path / "short.safetensors", context_length=16)
    with pytest.raises(DataIntegrityError, match=r"wpe.weight has shape \(16, 48\), expected \(32, 48\)"):
        verify_gpt2_file(path, TINY)
    with pytest.raises(DataIntegrityError,
                       match=r"is not GPT-2 small: wte.weight has shape \(97, 48\), expected \(50257, 768\)"):
        verify_gpt2_file(path, "small")

    def bad_head(sd):
        sd["lm_head.weight"] = torch.zeros(TINY.vocab_size, TINY.emb_dim + 1)

    with pytest.raises(DataIntegrityError, match="lm_head.weight has shape"):
        verify_gpt2_file(_tiny_file(tmp_path / "head.safetensors", edit=bad_head), TINY)


def test_verify_rejects_extra_blocks(tmp_path):
    path = _tiny_file(tmp_path / "deep.safetensors", n_layers=3)
    with pytest.raises(DataIntegrityError, match=r"has a block h.2, but .* has 2 blocks"):
        verify_gpt2_file(path, TINY)


def test_verify_rejects_truncated_and_foreign_files(tmp_path):
    good = _tiny_file(tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:-100])
    with pytest.raises(DataIntegrityError, match="not a readable safetensors file"):
        verify_gpt2_file(tmp_path / "cut.safetensors", TINY)
    (tmp_path / "page.safetensors").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataIntegrityError, match="delete it and download it again"):
        verify_gpt2_file(tmp_path / "page.safetensors", "small")
    with pytest.raises(FileNotFoundError):
        verify_gpt2_file(tmp_path / "absent.safetensors", TINY)
    with pytest.raises(ValueError, match="choose one of"):
        verify_gpt2_file(tmp_path / "good.safetensors", "huge")


# ---------------------------------------------------------------------------------
# Round trips through transformers
# ---------------------------------------------------------------------------------


def _save_for_transformers(model, folder):
    """``model`` as a folder that ``GPT2LMHeadModel.from_pretrained`` reads (config.json + model.safetensors)."""
    transformers = pytest.importorskip("transformers")
    cfg = model.cfg
    transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=cfg.tie_weights, bos_token_id=0, eos_token_id=0,
    ).save_pretrained(folder)
    save_file(export_gpt2_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder / "model.safetensors"


@pytest.mark.parametrize("changes", [{}, {"tie_weights": True}, {"qkv_bias": False}],
                         ids=["untied", "tied", "no-qkv-bias"])
def test_save_export_and_load_back_through_transformers(tmp_path, changes):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    ours = GPTModel(TINY.replace(**changes)).eval()
    with torch.no_grad():  # GPTModel starts with zero biases; make them matter
        for name, p in ours.named_parameters():
            if name.endswith(("bias", "shift")):
                p.normal_(0, 0.1)
    path = _save_for_transformers(ours, tmp_path)
    if ours.cfg.tie_weights:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            assert "lm_head.weight" not in f.keys()  # a tied head is implied by wte, as on the hub
    verify_gpt2_file(path, TINY)

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    back = GPTModel(TINY.replace(tie_weights=ours.cfg.tie_weights)).eval()  # qkv_bias=True
    load_gpt2_weights(back, path)
    ids = _ids()
    with torch.no_grad():
        expected = ours(ids)
        assert (hf(ids).logits - expected).abs().max().item() < 1e-5
        assert torch.equal(back(ids), expected)


def test_greedy_generation_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    ours = GPTModel(TINY).eval()
    _save_for_transformers(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    prompt = _ids(batch=1, tokens=5)
    mine = generate_text_simple(ours, prompt, max_new_tokens=10, context_size=TINY.context_length)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                             min_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(mine, theirs)


def test_gpt2_from_pretrained_builds_and_loads(monkeypatch, tmp_path):
    path = _tiny_file(tmp_path / "model.safetensors")

    class TinyConfig(GPTConfig):
        @classmethod
        def gpt2(cls, size="small", **overrides):
            return TINY.replace(**{"qkv_bias": False, **overrides})

    monkeypatch.setattr(weights, "GPTConfig", TinyConfig)
    monkeypatch.setattr(weights, "download_gpt2", lambda size, cache_dir=None: path)
    model = weights.gpt2_from_pretrained("small", drop_rate=0.2)
    assert model.cfg.qkv_bias and model.cfg.drop_rate == 0.2 and not model.training
    expected = GPTModel(TINY).eval()
    load_gpt2_weights(expected, path)
    with torch.no_grad():
        assert torch.equal(model(_ids()), expected(_ids()))


# ---------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def hub_allowed(monkeypatch):
    """CI exports HF_HUB_OFFLINE=1; these tests fake the network themselves, so they run without it."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_unknown_size():
    with pytest.raises(ValueError, match="choose one of"):
        weights.download_gpt2("tiny")


def test_offline_hub_gives_a_connection_error(monkeypatch, tmp_path):
    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "_hub_downloader", lambda: unreachable)
    with pytest.raises(ConnectionError, match="openai-community/gpt2-medium"):
        weights.download_gpt2("medium", cache_dir=tmp_path)


def test_unreachable_hub_fails_within_seconds(monkeypatch, tmp_path):
    # The real hf_hub_download retries for about 25 s; the probe must answer first.
    pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "_hub_endpoint", lambda: "http://127.0.0.1:9")  # refused at once
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="127.0.0.1:9 cannot be reached"):
        weights.download_gpt2("small", cache_dir=tmp_path)
    assert time.perf_counter() - start < 3


def test_silent_server_times_out(monkeypatch, tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        monkeypatch.setattr(hub, "_hub_downloader", lambda: None)
        monkeypatch.setattr(hub, "HF_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
        start = time.perf_counter()
        with pytest.raises(ConnectionError, match="cannot be reached"):
            weights.download_gpt2("large", cache_dir=tmp_path)
        assert time.perf_counter() - start < 2


def test_offline_plain_http_gives_a_connection_error(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hub_downloader", lambda: None)
    monkeypatch.setattr(hub, "HF_URL", "http://127.0.0.1:9")  # refused at once
    with pytest.raises(ConnectionError, match="could not download http://127.0.0.1:9/openai-community/gpt2/"):
        weights.download_gpt2("small", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("model.safetensors"))


@pytest.fixture
def tiny_sizes(monkeypatch):
    """Make download_gpt2 check files against TINY whatever size it is asked for."""
    monkeypatch.setattr(weights, "verify_gpt2_file", lambda path, size: verify_gpt2_file(path, TINY))


@pytest.fixture
def serve(monkeypatch):
    """serve(body, claimed_length=None): an HTTP server on 127.0.0.1 answering every GET with ``body``."""
    servers = []

    def start(body: bytes, claimed_length: int | None = None):
        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", str(claimed_length or len(body)))
                self.end_headers()

            def do_GET(self):
                self.do_HEAD()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        monkeypatch.setattr(hub, "_hub_downloader", lambda: None)
        monkeypatch.setattr(hub, "HF_URL", f"http://127.0.0.1:{server.server_port}")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_plain_download_is_verified_and_cached(tiny_sizes, serve, tmp_path):
    body = _tiny_file(tmp_path / "source.safetensors").read_bytes()
    serve(body)
    path = weights.download_gpt2("medium", cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "openai-community" / "gpt2-medium" / "model.safetensors"
    assert path.read_bytes() == body


def test_plain_download_of_the_wrong_model_is_removed(tiny_sizes, serve, tmp_path):
    serve(_tiny_file(tmp_path / "source.safetensors", n_layers=1).read_bytes())
    with pytest.raises(DataIntegrityError, match="has no tensor 'h.1.ln_1.weight'"):
        weights.download_gpt2("small", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("model.safetensors"))


def test_plain_download_checks_the_byte_count(tiny_sizes, serve, tmp_path):
    body = _tiny_file(tmp_path / "source.safetensors").read_bytes()
    serve(body[:1000], claimed_length=len(body))
    with pytest.raises(ConnectionError, match=f"stopped after 1000 of {len(body)} bytes"):
        weights.download_gpt2("small", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_cached_file_is_not_downloaded_again(tiny_sizes, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hub_downloader", lambda: None)
    monkeypatch.setattr(hub, "HF_URL", "http://127.0.0.1:9")
    cached = _tiny_file(tmp_path / "openai-community" / "gpt2-xl" / "model.safetensors")
    assert weights.download_gpt2("xl", cache_dir=tmp_path) == cached


def test_corrupt_cached_file_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hub_downloader", lambda: None)
    monkeypatch.setattr(hub, "HF_URL", "http://127.0.0.1:9")
    cached = tmp_path / "openai-community" / "gpt2-xl" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    with pytest.raises(DataIntegrityError, match="not a readable safetensors file"):
        weights.download_gpt2("xl", cache_dir=tmp_path)


def _fake_hub(tmp_path, body: bytes, sha: str):
    """A stand-in for hf_hub_download that stores ``body`` the way the hub's cache does (blob named by hash)."""
    calls = []

    def hf_hub_download(repo, filename, cache_dir=None):
        calls.append(repo)
        blob = tmp_path / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(body)
        link = tmp_path / "snapshots" / repo / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
        return str(link)

    return hf_hub_download, calls


def test_hub_download_checks_the_sha256(tiny_sizes, monkeypatch, tmp_path):
    source = _tiny_file(tmp_path / "source.safetensors")
    monkeypatch.setattr(hub, "_check_reachable", lambda *args: None)
    good, calls = _fake_hub(tmp_path / "good", source.read_bytes(), sha256_of(source))
    monkeypatch.setattr(hub, "_hub_downloader", lambda: good)
    assert weights.download_gpt2("large", cache_dir=tmp_path / "hub").read_bytes() == source.read_bytes()
    assert calls == ["openai-community/gpt2-large"]

    bad, _ = _fake_hub(tmp_path / "bad", source.read_bytes(), "0" * 64)
    monkeypatch.setattr(hub, "_hub_downloader", lambda: bad)
    with pytest.raises(DataIntegrityError, match="does not match the SHA-256 the hub gave"):
        weights.download_gpt2("large", cache_dir=tmp_path / "hub")


def test_hub_cache_is_used_offline(tiny_sizes, monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    # The hub's cache layout: models--owner--name/{refs/main, snapshots/<commit>/file}
    repo_dir = tmp_path / "models--openai-community--gpt2"
    commit = "a" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    cached = _tiny_file(repo_dir / "snapshots" / commit / "model.safetensors")

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(hub, "_hub_downloader", lambda: no_network)
    monkeypatch.setattr(hub, "_check_reachable", no_network)
    assert weights.download_gpt2("small", cache_dir=tmp_path) == cached


@pytest.mark.parametrize("with_hub_client", [True, False], ids=["huggingface_hub", "plain-https"])
def test_hf_hub_offline_forbids_downloads(monkeypatch, tmp_path, with_hub_client):
    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: nothing may be fetched")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_hub_downloader", lambda: no_network if with_hub_client else None)
    monkeypatch.setattr(hub, "_check_reachable", no_network)
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE is set"):
        weights.download_gpt2("small", cache_dir=tmp_path)
