"""Files from the Hugging Face hub (chapters 31 and 32): downloaded once, checked, and quick to fail offline.

``hub_file(repo, filename)`` uses ``huggingface_hub`` (its cache, its progress
bar, the SHA-256 it gives for large files) when that package is installed, and
plain HTTPS otherwise. Before a download it asks the hub whether it answers at
all, so an offline machine gets a clear ``ConnectionError`` within
``PROBE_TIMEOUT_S`` seconds instead of half a minute of retries.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

from .data_sources import DataIntegrityError

__all__ = ["HF_URL", "PROBE_TIMEOUT_S", "hub_file"]


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
        f"path to the loader (load_gpt2_weights, load_smollm2)"
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
