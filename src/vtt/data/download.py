"""Videos named by an http(s) URL, downloaded once into a cache folder (`vtt prepare` calls this).

    path = fetch("https://example.org/clip.mp4", Path("data/prepared.cache/downloads"))

429, 5xx, timeouts (no byte for `timeout` seconds), connection errors and a body cut off before its
Content-Length are retried from the start, with exponential backoff or the server's `Retry-After`; when
the retries are used up it is a DownloadError (the caller rejects that clip). A download is written to a
per-process temporary name and renamed when complete, so a cache never holds half a file under a final
name; `remove_stale_partials` deletes those of killed processes.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from vtt.outputs import is_out_of_space

SCHEMES = ("http", "https")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # as huggingface_hub retries


class DownloadError(Exception):
    """A URL that could not be fetched; the message names the URL and the cause."""

    def __init__(self, url: str, cause: str):
        super().__init__(f"{url}: {cause}")
        self.url = url
        self.cause = cause


@dataclass(frozen=True)
class DownloadPolicy:
    retries: int = 5  # retries after the first try
    base_wait: float = 1.0  # seconds before the first retry, doubled each time (Retry-After wins)
    max_wait: float = 30.0
    timeout: float = 60.0  # seconds without a byte (connect or read)
    max_bytes: int = 2 * 1024**3


def is_url(video: str) -> bool:
    return "://" in video


def cached_path(url: str, cache: Path) -> Path:
    """Where `url` is kept: a hash of the URL, with the URL's file suffix (decoders look at it)."""
    suffix = Path(urlparse(url).path).suffix[:8]
    return cache / (hashlib.sha256(url.encode()).hexdigest()[:24] + suffix)


def fetch(url: str, cache: Path, policy: DownloadPolicy | None = None) -> Path:
    """The local copy of `url`, downloading it first when the cache lacks it; DownloadError on failure.

    A disk that is full (ENOSPC, EDQUOT) is not a DownloadError: the OSError is raised for the caller to stop on.
    """
    from huggingface_hub import constants

    policy = policy or DownloadPolicy()
    scheme = urlparse(url).scheme
    if scheme not in SCHEMES:
        raise DownloadError(url, f"scheme {scheme!r} is not fetched: only {' and '.join(SCHEMES)} URLs are")
    target = cached_path(url, cache)
    if target.is_file():
        return target
    if constants.is_offline_mode():  # offline compute nodes: fail at once rather than after every retry
        raise DownloadError(url, "HF_HUB_OFFLINE is set, which blocks the downloader: unset it")
    cache.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    try:
        _download(url, partial, policy)
        partial.rename(target)
        return target
    except OSError as err:
        if is_out_of_space(err):
            raise
        raise DownloadError(url, f"{type(err).__name__}: {err}") from None
    finally:
        partial.unlink(missing_ok=True)


def _download(url: str, partial: Path, policy: DownloadPolicy) -> None:
    """GET `url` into `partial`, trying again from the start after a retryable status, a stall or a cut-off body.

    Not huggingface_hub's http_stream_backoff: an error while its response's body is read is thrown into its
    generator, which retries and yields again, and the caller gets "generator didn't stop after throw()".
    """
    import httpx2

    wait = policy.base_wait
    # A client of our own: huggingface_hub's shared one is closed by any thread that meets a connection error.
    with httpx2.Client(follow_redirects=True, timeout=policy.timeout) as client:
        for attempt in range(policy.retries + 1):
            delay = None
            try:
                with client.stream("GET", url) as response:
                    if response.status_code in RETRY_STATUS:
                        cause = f"HTTP {response.status_code} {response.reason_phrase}"
                        delay = retry_after(response.headers.get("retry-after"))
                    elif response.status_code >= 400:
                        raise DownloadError(url, f"HTTP {response.status_code} {response.reason_phrase}")
                    else:
                        _save(url, response, partial, policy)
                        return
            except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, CutOff) as err:
                cause = f"{type(err).__name__}: {err}"
            except httpx2.HTTPError as err:  # not worth retrying: a bad URL, too many redirects, ...
                raise DownloadError(url, f"{type(err).__name__}: {err}") from None
            if attempt == policy.retries:
                raise DownloadError(url, f"{cause} (after {policy.retries} retries)")
            time.sleep(wait if delay is None else delay)  # Retry-After wins over the backoff
            wait = min(policy.max_wait, wait * 2)


class CutOff(Exception):
    """The body ended before the length the server announced."""


def _save(url: str, response, partial: Path, policy: DownloadPolicy) -> None:
    announced = int(response.headers.get("content-length") or 0)
    if announced > policy.max_bytes:
        raise DownloadError(url, f"{announced} bytes is over the size cap of {policy.max_bytes}")
    written = 0
    with partial.open("wb") as sink:  # "wb": a retry starts the file again
        for chunk in response.iter_bytes(1 << 20):
            written += len(chunk)
            if written > policy.max_bytes:
                raise DownloadError(url, f"more than the size cap of {policy.max_bytes} bytes")
            sink.write(chunk)
    if announced and written < announced:
        raise CutOff(f"the body ended after {written} of {announced} bytes")


def retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (a number or an HTTP date); None without one."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def partial_path(target: Path) -> Path:
    """Where `target` is written before its rename: per host and process, so writers never share one file."""
    return target.with_name(f"{target.name}.part-{socket.gethostname()}-{os.getpid()}")


def remove_stale_partials(folder: Path) -> int:
    """Delete the partial files (partial_path) of this host's dead processes under `folder`; returns how many.

    A process killed mid-write (SIGKILL, OOM, a node lost) never reaches its `finally`. Another host's files are
    left: a pid says nothing about a process on another node sharing the folder.
    """
    host, removed = socket.gethostname(), 0
    for path in folder.glob("*.part-*"):
        owner, _, pid = path.name.rpartition(".part-")[2].rpartition("-")
        # owner "": a file named by the pid alone, as vtt named them before
        if owner in (host, "") and pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
