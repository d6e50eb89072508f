"""Videos named by an http(s) URL, downloaded once into a cache folder (`vtt prepare` calls this).

    path = fetch("https://example.org/clip.mp4", Path("data/prepared.cache/downloads"))

Retries, exponential backoff and `Retry-After` come from huggingface_hub's `http_stream_backoff`
(429, 5xx, timeouts and connection errors are retried). A download is written to a temporary name
and renamed when complete, so a cache never holds half a file under a final name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

SCHEMES = ("http", "https")


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
    """The local copy of `url`, downloading it first when the cache lacks it; DownloadError on failure."""
    return _fetch(url, cache, policy)


def _fetch(url: str, cache: Path, policy: DownloadPolicy | None = None) -> Path:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import http_stream_backoff

    policy = policy or DownloadPolicy()
    scheme = urlparse(url).scheme
    if scheme not in SCHEMES:
        raise DownloadError(url, f"scheme {scheme!r} is not fetched: only {' and '.join(SCHEMES)} URLs are")
    target = cached_path(url, cache)
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        with http_stream_backoff(
            "GET",
            url,
            max_retries=policy.retries,
            base_wait_time=policy.base_wait,
            max_wait_time=policy.max_wait,
            timeout=policy.timeout,
        ) as response:
            if response.status_code >= 400:
                raise DownloadError(url, f"HTTP {response.status_code} {response.reason_phrase}")
            announced = int(response.headers.get("content-length") or 0)
            if announced > policy.max_bytes:
                raise DownloadError(url, f"{announced} bytes is over the size cap of {policy.max_bytes}")
            written = 0
            with partial.open("wb") as sink:
                for chunk in response.iter_bytes(1 << 20):
                    written += len(chunk)
                    if written > policy.max_bytes:
                        raise DownloadError(url, f"more than the size cap of {policy.max_bytes} bytes")
                    sink.write(chunk)
        partial.rename(target)
        return target
    except OfflineModeIsEnabled:
        raise DownloadError(url, "HF_HUB_OFFLINE is set, which blocks the downloader: unset it") from None
    except HfHubHTTPError as err:  # retries used up on 429/5xx
        status = err.response.status_code if err.response is not None else "?"
        raise DownloadError(url, f"HTTP {status} after {policy.retries} retries") from None
    except (httpx2.HTTPError, OSError) as err:
        raise DownloadError(url, f"{type(err).__name__}: {err} (after {policy.retries} retries)") from None
    finally:
        partial.unlink(missing_ok=True)
