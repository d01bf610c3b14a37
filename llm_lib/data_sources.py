"""The book's datasets: fetched once from their public homes, or read from an offline folder.

Every file is checked against a SHA-256 recorded here, whether it was just
downloaded or found on disk, so a truncated download or an edited copy fails
loudly instead of quietly changing the book's numbers.

Set ``LLM_LIB_DATA_DIR`` to a folder holding the files (the course's CI points
it at a read-only copy) and nothing is downloaded. Otherwise files are cached
in ``$XDG_CACHE_HOME/llm_lib`` (``~/.cache/llm_lib`` by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
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
    "write_atomically",
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
    archive_member: str | None = None  # set when `url` is an archive (zip or tar) holding the file
    source: str = ""


_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_OPENAI_BPE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
# MMLU (Hendrycks et al., "Measuring Massive Multitask Language Understanding", ICLR 2021), MIT
# licence: the released archive holds, among others, data/{dev,val,test}/<subject>_<split>.csv for 57 subjects.
_MMLU_TAR = "https://people.eecs.berkeley.edu/~hendrycks/data.tar"
_MMLU_FILES = [  # (split/file, bytes, SHA-256) of the five subjects the book uses
    ("dev/abstract_algebra_dev.csv", 719, "bd8c73f3c75bea9db82d281d9da6949cea687b987dba24a142c638e758046624"),
    ("dev/astronomy_dev.csv", 1_943, "bb03eca519a3fbc04017dc4783635763ac928f0811ce6243dbcbf0d526dbe1e3"),
    ("dev/high_school_computer_science_dev.csv", 2_809,
     "5de3800dfbbfaa89050413a765deaf774fdb0611e370951383fb50fac774663e"),
    ("dev/high_school_geography_dev.csv", 1_268, "e43fc27b9fa8b808773a2871007b39e012a1cc1ec902f85d85cc9c27cc12883d"),
    ("dev/machine_learning_dev.csv", 2_197, "e4b1b09985dbdc499d51a2a2e83d93ae05bfe72ea7407c18e3aa3d2ab9ce7517"),
    ("val/abstract_algebra_val.csv", 1_791, "ab0c6d19c4523969ec7b553ed49adecdb9cc00decc76c26c56c42ba198d8047c"),
    ("val/astronomy_val.csv", 4_615, "3dbe51f827890dd079e04c8ab024c5a2a7829033cd16913744af99f7b3a46328"),
    ("val/high_school_computer_science_val.csv", 3_148,
     "5e40b8773655e59293ecf6a3e60346f3dc23273a808e64a9cd415b8dd2d55381"),
    ("val/high_school_geography_val.csv", 3_778, "94444fda55747826967db7d9eb4a977edc34a64c0cdf2a8e865c382a8610d96b"),
    ("val/machine_learning_val.csv", 2_983, "23ea00a670424f7f7f54c3d32a04f470983234ffa7c6356eab8f4f7c6150fce4"),
    ("test/abstract_algebra_test.csv", 17_358, "4be89c0fb1d2419722e88880f6da3da95750367185ecd36f6492a6f74785cf64"),
    ("test/astronomy_test.csv", 42_999, "87c9c3cb5a55395c70dd9ed521dd7d2629fd4ff236c5ab647102e007f52a9341"),
    ("test/high_school_computer_science_test.csv", 42_281,
     "63806168fb0e5a72fe5bfb880f19816d8997e28d3f312c6b1831f4d40f432059"),
    ("test/high_school_geography_test.csv", 37_386,
     "c6acdaa9d94c88cdefb9dd569e376733d9ba670c07db12cdff36ccdc18c2ab0c"),
    ("test/machine_learning_test.csv", 31_698, "05984b90f887a7da12b3dd8e41e6c34fa856b2c939ea3124975d90910ceb2af0"),
]

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
        *(
            DataFile(f"mmlu/{file}", _MMLU_TAR, sha256, size, archive_member=f"data/{file}",
                     source="MMLU (Hendrycks et al., ICLR 2021), MIT licence")
            for file, size, sha256 in _MMLU_FILES
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
    request = urllib.request.Request(url, headers={"User-Agent": "llm_lib"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ConnectionError(
            f"could not download {url} ({exc}). If this machine is offline, put the file at "
            f"{dest} yourself, or set LLM_LIB_DATA_DIR to a folder that holds the book's data."
        ) from exc
    total = int(response.headers.get("Content-Length") or 0) or None

    def copy_response(tmp: Path) -> None:
        with open(tmp, "wb") as out, response, tqdm(
            total=total, unit="B", unit_scale=True, desc=desc or dest.name, leave=False
        ) as bar:
            written = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if total is not None and written != total:
            raise ConnectionError(f"download of {url} stopped after {written} of {total} bytes")

    write_atomically(dest, copy_response)
    return dest


def _read_member(archive: Path, member: str, url: str) -> bytes:
    """The bytes of ``member`` in a zip or tar archive (any compression tarfile reads)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            if member in zf.namelist():
                return zf.read(member)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            names = set(tf.getnames())
            for name in (member, f"./{member}"):  # `tar -cf x.tar ./data` stores names as ./data/...
                if name in names and (f := tf.extractfile(name)) is not None:
                    return f.read()
    else:
        raise DataIntegrityError(f"{url} is neither a zip nor a tar archive")
    raise KeyError(f"{url} holds no file {member!r}")


def write_atomically(path: str | os.PathLike, write) -> Path:
    """Call ``write(temporary_path)``, then rename the result to ``path`` in one step; returns the path.

    The temporary file sits in the same folder, and ``os.replace`` within one
    folder is atomic on POSIX and Windows: a reader sees the old file or the
    new one, never half of one. If ``write`` fails or is interrupted, the
    temporary file is removed and ``path`` is untouched. Downloads, the data
    files, checkpoints and saved responses are all written this way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fetch(entry: DataFile, root: Path) -> None:
    """Download ``entry`` to ``root / entry.name``; from an archive, extract it and its missing siblings.

    One download of a large archive (MMLU's holds 57 subjects) then serves
    every file the book takes from it; the archive itself is not kept.
    """
    if entry.archive_member is None:
        download(entry.url, root / entry.name, desc=entry.name)
        return
    with tempfile.TemporaryDirectory() as folder:
        archive = download(entry.url, Path(folder) / "archive", desc=Path(entry.url).name)
        data = _read_member(archive, entry.archive_member, entry.url)
        write_atomically(root / entry.name, lambda tmp: tmp.write_bytes(data))
        for other in DATASETS.values():
            if (other.url == entry.url and other.archive_member is not None
                    and not (root / other.name).is_file()):
                with contextlib.suppress(KeyError):  # a sibling that is missing fails when it is asked for
                    sibling = _read_member(archive, other.archive_member, entry.url)
                    write_atomically(root / other.name, lambda tmp, b=sibling: tmp.write_bytes(b))


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
            _fetch(entry, cache_dir())
    _verify(path, entry)
    return path


def load_text(name: str, encoding: str = "utf-8") -> str:
    """The verified contents of data file ``name`` as a string."""
    return data_path(name).read_text(encoding=encoding)
