"""Downloads of URL videos: retries on 429/5xx, stalls and cut-off bodies, DownloadError when retries run out,
and no partial file left behind, from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from servers import ScriptedServer, closed_port

from vtt.data.download import DownloadError, DownloadPolicy, fetch, remove_stale_partials

FAST = DownloadPolicy(retries=2, base_wait=0.05, max_wait=0.1, timeout=5)
BODY = os.urandom(300_000)


@pytest.fixture
def serve():
    servers = []

    def start(*script: str, retry_after: str = "0") -> ScriptedServer:
        servers.append(ScriptedServer(BODY, list(script), retry_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def partials(folder):
    return [p.name for p in folder.iterdir() if ".part-" in p.name]


def test_fetch_retries_after_429_then_downloads_once(serve, tmp_path):
    server = serve("429", "429", "ok")
    path = fetch(f"{server.url}/clip.mp4", tmp_path, FAST)
    assert server.requests == 3 and path.read_bytes() == BODY and path.suffix == ".mp4"
    assert fetch(f"{server.url}/clip.mp4", tmp_path, FAST) == path and server.requests == 3  # cached


def test_fetch_waits_as_long_as_retry_after_says_on_503(serve, tmp_path):
    server = serve("503", "ok", retry_after="1")
    start = time.monotonic()
    assert fetch(f"{server.url}/clip.mp4", tmp_path, FAST).read_bytes() == BODY
    assert server.requests == 2 and time.monotonic() - start >= 1  # the backoff alone would wait 0.05 s


@pytest.mark.parametrize("failure", ["cut", "stall"])
def test_fetch_retries_a_body_cut_off_or_stalled_midway_from_the_start(serve, tmp_path, failure):
    server = serve(failure, "ok")
    policy = DownloadPolicy(retries=2, base_wait=0.05, timeout=0.5)
    assert fetch(f"{server.url}/clip.mp4", tmp_path, policy).read_bytes() == BODY
    assert server.requests == 2 and partials(tmp_path) == []


@pytest.mark.parametrize(("failure", "cause"), [("cut", "RemoteProtocolError"), ("stall", "ReadTimeout")])
def test_fetch_is_a_download_error_when_every_try_is_cut_off_or_stalls(serve, tmp_path, failure, cause):
    server = serve(failure)
    policy = DownloadPolicy(retries=1, base_wait=0.05, timeout=0.5)
    with pytest.raises(DownloadError, match=rf"clip.mp4: {cause}: .*\(after 1 retries\)"):
        fetch(f"{server.url}/clip.mp4", tmp_path, policy)
    assert server.requests == 2 and list(tmp_path.iterdir()) == []


def test_fetch_of_a_status_that_stays_503_names_it(serve, tmp_path):
    server = serve("503")
    with pytest.raises(DownloadError, match=r"HTTP 503 Service Unavailable \(after 2 retries\)"):
        fetch(f"{server.url}/clip.mp4", tmp_path, FAST)
    assert server.requests == 3


def test_fetch_of_unreachable_url_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="ConnectError"):
        fetch(f"http://127.0.0.1:{closed_port()}/clip.mp4", tmp_path, FAST)
    assert not any(tmp_path.iterdir())


def test_fetch_refuses_other_schemes_and_files_over_the_size_cap(serve, tmp_path):
    with pytest.raises(DownloadError, match="only http and https"):
        fetch("file:///etc/passwd", tmp_path, FAST)
    server = serve("ok")
    with pytest.raises(DownloadError, match="over the size cap"):
        fetch(f"{server.url}/clip.mp4", tmp_path, DownloadPolicy(max_bytes=100))
    assert not any(tmp_path.iterdir())  # no partial file left


def test_partial_file_of_a_killed_download_is_removed_later_and_a_live_ones_is_kept(serve, tmp_path):
    server = serve("stall")
    url = f"{server.url}/clip.mp4"
    code = f"from pathlib import Path; from vtt.data.download import fetch; fetch({url!r}, Path({str(tmp_path)!r}))"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not partials(tmp_path) and time.monotonic() < deadline:  # half the body written, then the stall
            time.sleep(0.05)
        [killed] = partials(tmp_path)
        assert killed.endswith(f"-{child.pid}")
    finally:
        child.send_signal(signal.SIGKILL)  # as the OOM killer or a lost node would: no `finally` runs
        child.wait()
    live = tmp_path / f"other.mp4.part-{socket.gethostname()}-{os.getpid()}"
    live.write_bytes(b"being written")
    assert remove_stale_partials(tmp_path) == 1
    assert partials(tmp_path) == [live.name]
