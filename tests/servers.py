"""HTTP servers on 127.0.0.1 for the download tests: each request follows the next step of a script."""

from __future__ import annotations

import http.server
import socket
import threading


class ScriptedServer:
    """Serves `body` at any path; request n does script[n] (the last step repeats):

    "ok": 200 and the whole body; "429" / "503": that status with `Retry-After: retry_after`;
    "cut": Content-Length of the whole body, half of it, then the connection closed;
    "stall": Content-Length of the whole body, half of it, then nothing until the server closes.
    """

    def __init__(self, body: bytes, script: list[str], retry_after: str = "0"):
        self.body, self.script, self.retry_after, self.requests = body, list(script), retry_after, 0
        self.closing = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                step = outer.script[min(outer.requests, len(outer.script) - 1)]
                outer.requests += 1
                if step in ("429", "503"):
                    self.send_response(int(step))
                    self.send_header("Retry-After", outer.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                if step == "ok":
                    self.wfile.write(outer.body)
                    return
                self.wfile.write(outer.body[: len(outer.body) // 2])
                self.wfile.flush()
                if step == "stall":
                    outer.closing.wait(30)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
