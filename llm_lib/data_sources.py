"""The book's datasets: fetched once from their public homes, or read from an offline folder.

Every file is checked against a SHA-256 recorded here, whether it was just
downloaded or found on disk, so a truncated download or an edited copy fails
loudly instead of quietly changing the book's numbers.

Set ``LLM_LIB_DATA_DIR`` to a folder holding the files (the course's CI points
it at a read-only copy) and nothing is downloaded. Otherwise files are cached
in ``$XDG_CACHE_HOME/llm_lib`` (``~/.cache/llm_lib`` by default).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATASETS",
    "DataFile",
    "DataIntegrityError",
    "cache_dir",
    "data_path",
    "download",
    "load_text",
    "sha256_of",
]

DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class DataFile:
    """One file the book uses: where it lives online and what its bytes must hash to."""

    name: str
    url: str
    sha256: str
    size: int
    archive_member: str | None = None  # set when `url` is a zip holding the file
    source: str = ""


_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_OPENAI_BPE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"

DATASETS: dict[str, DataFile] = {
    f.name: f
    for f in [
        DataFile(
            "the-verdict.txt",
            f"{_RASBT}/ch02/01_main-chapter-code/the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            20_479,
            source="Edith Wharton, The Verdict (1908), public domain",
        ),
        DataFile(
            "gpt2/encoder.json",
            f"{_OPENAI_BPE}/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            1_042_301,
            source="OpenAI GPT-2 token-to-id map, modified MIT licence",
        ),
        DataFile(
            "gpt2/vocab.bpe",
            f"{_OPENAI_BPE}/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            456_318,
            source="OpenAI GPT-2 merge list, modified MIT licence",
        ),
        DataFile(
            "instruction-data.json",
            f"{_RASBT}/ch07/01_main-chapter-code/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            203_524,
            source="instruction data of Build a Large Language Model (From Scratch), Apache-2.0",
        ),
        DataFile(
            "SMSSpamCollection",
            "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            477_907,
            archive_member="SMSSpamCollection",
            source="SMS Spam Collection v.1 (Almeida et al., 2011), UCI, CC BY 4.0",
        ),
        DataFile(
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            1_115_394,
            source="Tiny Shakespeare from karpathy/char-rnn, public domain text",
        ),
    ]
}


class DataIntegrityError(ValueError):
    """A data file whose bytes do not hash to the recorded SHA-256."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where downloads are kept when ``LLM_LIB_DATA_DIR`` is not set."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm_lib"


def _lookup(name: str) -> DataFile:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise KeyError(f"unknown data file {name!r}; the book knows: {known}") from None


def _verify(path: Path, entry: DataFile) -> None:
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise DataIntegrityError(
            f"{path} does not match its recorded checksum: expected SHA-256 {entry.sha256}, "
            f"got {actual}. The file is corrupt, truncated or a different version; "
            f"delete it (or fix the copy in LLM_LIB_DATA_DIR) and try again."
        )


def download(url: str, dest: str | os.PathLike, *, timeout: float = DOWNLOAD_TIMEOUT_S,
             desc: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file, then rename), with a progress bar."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "llm_lib"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ConnectionError(
            f"could not download {url} ({exc}). If this machine is offline, put the file at "
            f"{dest} yourself, or set LLM_LIB_DATA_DIR to a folder that holds the book's data."
        ) from exc
    total = int(response.headers.get("Content-Length") or 0) or None
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, response, tqdm(
            total=total, unit="B", unit_scale=True, desc=desc or dest.name, leave=False
        ) as bar:
            written = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if total is not None and written != total:
            raise ConnectionError(f"download of {url} stopped after {written} of {total} bytes")
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def _fetch(entry: DataFile, dest: Path) -> None:
    if entry.archive_member is None:
        download(entry.url, dest, desc=entry.name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = download(entry.url, Path(tmp) / "archive.zip", desc=entry.name)
        with zipfile.ZipFile(archive) as zf, zf.open(entry.archive_member) as member:
            buffer = io.BytesIO(member.read())
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            shutil.copyfileobj(buffer, out)


def data_path(name: str) -> Path:
    """Local path of the verified data file ``name`` (e.g. ``"the-verdict.txt"``), downloading it if needed."""
    entry = _lookup(name)
    offline_dir = os.environ.get("LLM_LIB_DATA_DIR")
    if offline_dir:
        path = Path(offline_dir) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{name} is not in LLM_LIB_DATA_DIR={offline_dir} (looked for {path}); "
                f"unset the variable to download it from {entry.url}"
            )
    else:
        path = cache_dir() / name
        if not path.is_file():
            _fetch(entry, path)
    _verify(path, entry)
    return path


def load_text(name: str, encoding: str = "utf-8") -> str:
    """The verified contents of data file ``name`` as a string."""
    return data_path(name).read_text(encoding=encoding)
