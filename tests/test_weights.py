"""Downloading GPT-2's weights: clear errors when the hub cannot be reached."""

import pytest

from llm_lib import weights


def test_unknown_size():
    with pytest.raises(ValueError, match="choose one of"):
        weights.download_gpt2("tiny")


def test_offline_hub_gives_a_connection_error(monkeypatch, tmp_path):
    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights, "_hub_downloader", lambda: unreachable)
    with pytest.raises(ConnectionError, match="openai-community/gpt2-medium"):
        weights.download_gpt2("medium", cache_dir=tmp_path)


def test_offline_plain_http_gives_a_connection_error(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "_hub_downloader", lambda: None)
    monkeypatch.setattr(weights, "HF_URL", "http://127.0.0.1:9")  # refused at once
    with pytest.raises(ConnectionError, match="could not download http://127.0.0.1:9/openai-community/gpt2/"):
        weights.download_gpt2("small", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("model.safetensors"))


def test_cached_file_is_not_downloaded_again(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "_hub_downloader", lambda: None)
    monkeypatch.setattr(weights, "HF_URL", "http://127.0.0.1:9")
    cached = tmp_path / "openai-community" / "gpt2-xl" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert weights.download_gpt2("xl", cache_dir=tmp_path) == cached
