"""A stand-in for the Hugging Face Hub on 127.0.0.1 (a free port), for HF_ENDPOINT in the tests.

It answers just what huggingface_hub 2.4 calls for whoami, create_repo and a commit of regular
(non-LFS, non-xet) files: GET /api/whoami-v2, POST /api/repos/create, POST /api/validate-yaml,
POST /api/{type}s/{repo}/preupload/{rev} (every file "regular") and POST /api/{type}s/{repo}/commit/{rev}
(ndjson). `fail` scripts errors: {"create": [429, 429]} answers 429 to the first two create_repo calls.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.fail: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.repos: dict[str, dict] = {}  # "type:owner/name" -> {"private": bool}
        self.files: dict[str, dict[str, bytes]] = {}  # "type:owner/name" -> path -> content
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)
                hub.requests.append((self.command, self.path, status))

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _route(self) -> None:
                body = self._body()
                path = self.path.split("?")[0]
                name = _endpoint(self.command, path)
                if name is None:
                    return self._answer(404, {"error": f"fake hub: no route for {self.command} {path}"})
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._answer(401, {"error": "Invalid credentials in Authorization header"})
                if hub.fail.get(name):
                    return self._answer(hub.fail[name].pop(0), {"error": f"fake hub: scripted failure of {name}"})
                return self._answer(200, hub.handle(name, path, body))

            do_GET = do_POST = _route

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, name: str) -> list[int]:
        """Statuses answered to one endpoint, in order."""
        return [status for method, path, status in self.requests if _endpoint(method, path.split("?")[0]) == name]

    def handle(self, name: str, path: str, body: bytes) -> dict:
        if name == "whoami":
            return {"name": self.user, "type": "user", "auth": {"accessToken": {"role": "write"}}}
        if name == "create":
            payload = json.loads(body)
            kind = payload.get("type") or "model"
            repo = f"{payload.get('organization') or self.user}/{payload['name']}"
            self.repos[f"{kind}:{repo}"] = {"private": payload.get("visibility") == "private"}
            prefix = "" if kind == "model" else f"{kind}s/"
            return {"url": f"{self.endpoint}/{prefix}{repo}"}
        if name == "validate-yaml":
            return {"errors": [], "warnings": []}
        kind, repo = _repo_of(path)
        if name == "preupload":
            files = json.loads(body)["files"]
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if name == "commit":
            stored = self.files.setdefault(f"{kind}:{repo}", {})
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    stored[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return {"commitUrl": f"{self.endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
        raise AssertionError(name)


def _endpoint(method: str, path: str) -> str | None:
    if method == "GET" and path == "/api/whoami-v2":
        return "whoami"
    if method == "POST" and path == "/api/repos/create":
        return "create"
    if method == "POST" and path == "/api/validate-yaml":
        return "validate-yaml"
    match = re.fullmatch(r"/api/(models|datasets)/[^/]+/[^/]+/(preupload|commit)/[^/]+", path)
    if method == "POST" and match:
        return match.group(2)
    return None


def _repo_of(path: str) -> tuple[str, str]:
    parts = path.split("/")
    return parts[2][:-1], f"{parts[3]}/{parts[4]}"
