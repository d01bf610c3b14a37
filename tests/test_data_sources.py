"""Data files: checksums checked, clear errors for corrupt, missing and unreachable files."""

import hashlib

import pytest

from llm_lib import data_sources
from llm_lib.data_sources import DATASETS, DataIntegrityError, data_path, load_text


def test_every_offline_file_verifies():
    for name, entry in DATASETS.items():
        path = data_path(name)
        assert path.stat().st_size == entry.size
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256


def test_the_verdict():
    text = load_text("the-verdict.txt")
    assert len(text) == 20_479 and text.startswith("I HAD always thought Jack Gisburn")


def test_corrupt_file_names_file_and_both_hashes(tmp_path, monkeypatch):
    (tmp_path / "the-verdict.txt").write_text("not the story")
    monkeypatch.setenv("LLM_LIB_DATA_DIR", str(tmp_path))
    actual = hashlib.sha256(b"not the story").hexdigest()
    with pytest.raises(DataIntegrityError) as err:
        data_path("the-verdict.txt")
    message = str(err.value)
    assert "the-verdict.txt" in message
    assert DATASETS["the-verdict.txt"].sha256 in message and actual in message


def test_missing_file_in_offline_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_LIB_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="LLM_LIB_DATA_DIR"):
        data_path("instruction-data.json")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="the-verdict.txt"):
        data_path("no-such-file.txt")


def test_cache_is_used_and_verified(tmp_path, monkeypatch):
    good = data_path("the-verdict.txt").read_bytes()
    monkeypatch.delenv("LLM_LIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "llm_lib" / "the-verdict.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good)  # a verified cached copy is used without any download
    assert data_path("the-verdict.txt") == cached
    cached.write_bytes(good[:100])
    with pytest.raises(DataIntegrityError, match="expected SHA-256"):
        data_path("the-verdict.txt")


def test_offline_download_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_LIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    entry = DATASETS["the-verdict.txt"]
    # Port 9 (discard) on localhost refuses the connection at once: an offline machine in miniature.
    monkeypatch.setitem(DATASETS, "the-verdict.txt",
                        data_sources.DataFile(entry.name, "http://127.0.0.1:9/x", entry.sha256,
                                              entry.size))
    with pytest.raises(ConnectionError, match="LLM_LIB_DATA_DIR"):
        data_path("the-verdict.txt")
    assert not (tmp_path / "llm_lib" / "the-verdict.txt").exists()
