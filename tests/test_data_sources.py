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


def test_mmlu_files_are_registered_with_their_archive_members():
    mmlu = {name: entry for name, entry in DATASETS.items() if name.startswith("mmlu/")}
    assert len(mmlu) == 15  # five subjects x dev, val, test
    entry = mmlu["mmlu/test/astronomy_test.csv"]
    assert entry.url.endswith("/data.tar") and entry.archive_member == "data/test/astronomy_test.csv"
    assert data_path("mmlu/dev/astronomy_dev.csv").read_text().startswith("You are pushing a truck")


def _archive_entries(monkeypatch, url, files):
    """Register ``files`` ({name: (member, bytes)}) as held by the archive at ``url``; returns the names."""
    for name, (member, data) in files.items():
        monkeypatch.setitem(DATASETS, name, data_sources.DataFile(
            name, url, hashlib.sha256(data).hexdigest(), len(data), archive_member=member))
    return list(files)


def _count_downloads(monkeypatch):
    calls = []

    def counting(url, dest, **kwargs):
        calls.append(url)
        return real_download(url, dest, **kwargs)

    real_download = data_sources.download
    monkeypatch.setattr(data_sources, "download", counting)
    return calls


@pytest.mark.parametrize("prefix", ["", "./"])
def test_tar_members_come_from_one_download(tmp_path, monkeypatch, prefix):
    import tarfile

    files = {"bench/test/a.csv": ("data/test/a.csv", b"question,A,B,C,D,B\n"),
             "bench/dev/a.csv": ("data/dev/a.csv", b'"two\nlines",1,2,3,4,A\n')}
    tar_path = tmp_path / "data.tar"
    with tarfile.open(tar_path, "w") as tf:
        for member, data in files.values():
            src = tmp_path / "src" / member
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            tf.add(src, arcname=prefix + member)
    monkeypatch.delenv("LLM_LIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    names = _archive_entries(monkeypatch, tar_path.as_uri(), files)  # a file:// URL: no network
    calls = _count_downloads(monkeypatch)

    assert data_path(names[0]).read_bytes() == files[names[0]][1]
    assert data_path(names[1]).read_bytes() == files[names[1]][1]  # extracted with the first
    assert len(calls) == 1
    assert not list((tmp_path / "cache").rglob("*.part")) and not list((tmp_path / "cache").rglob("*.tar"))


def test_zip_member_and_a_missing_member(tmp_path, monkeypatch):
    import zipfile

    zip_path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("inner/file.txt", b"hello")
    monkeypatch.delenv("LLM_LIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _archive_entries(monkeypatch, zip_path.as_uri(), {"file.txt": ("inner/file.txt", b"hello"),
                                                      "gone.txt": ("inner/gone.txt", b"?")})
    assert load_text("file.txt") == "hello"
    with pytest.raises(KeyError, match="inner/gone.txt"):
        data_path("gone.txt")


def test_an_archive_that_is_neither_zip_nor_tar(tmp_path, monkeypatch):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"plain bytes, no archive")
    monkeypatch.delenv("LLM_LIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _archive_entries(monkeypatch, blob.as_uri(), {"x.txt": ("x.txt", b"x")})
    with pytest.raises(DataIntegrityError, match="neither a zip nor a tar"):
        data_path("x.txt")


def test_write_atomically_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from llm_lib.data_sources import write_atomically

    target = tmp_path / "notes.txt"
    write_atomically(target, lambda tmp: tmp.write_text("old"))

    def fail_half_way(tmp):
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, fail_half_way)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no temporary file left


def test_a_download_cut_short_leaves_no_file(tmp_path, monkeypatch):
    import io
    import urllib.request

    class Cut(io.BytesIO):
        headers = {"Content-Length": "10"}

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: Cut(b"12345"))
    with pytest.raises(ConnectionError, match="stopped after 5 of 10 bytes"):
        data_sources.download("https://example.org/file.bin", tmp_path / "file.bin")
    assert list(tmp_path.iterdir()) == []
