"""A local stand-in for the Hugging Face hub's file endpoint, for testing real downloads offline.

It speaks what huggingface_hub's `get_hf_file_metadata`, `http_get` and `hf_hub_download`
need (read from huggingface_hub 2.4's file_download.py): HEAD and GET on
/{owner}/{repo}/resolve/{revision}/{path} with X-Repo-Commit, ETag / X-Linked-Etag (the LFS
sha256), X-Linked-Size, Content-Length and Accept-Ranges; Range requests answered with 206;
404 with X-Error-Code (EntryNotFound / RepoNotFound) as the hub sends. Optionally it
redirects LFS files to another host name, as the hub redirects to its CDN, and it can be
told to drop a transfer after N bytes or to fail the next request, to test resuming.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class Request:
    """One request as the server saw it, for assertions (e.g. that a Range resumed a transfer)."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def range_start(self) -> int | None:
        m = re.match(r"bytes=(\d+)-", self.headers.get("range", ""))
        return int(m.group(1)) if m else None


@dataclass
class _File:
    data: bytes
    sha256: str  # what the server advertises; a test may make it lie


@dataclass
class FakeHub:
    """Files by (repo, path); `plan` scripts the next GETs: ("drop", n_bytes) or ("status", code)."""

    redirect: bool = False
    files: dict[tuple[str, str], _File] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    plan: list[tuple[str, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: str, path: str, data: bytes, *, advertised_sha256: str | None = None) -> str:
        """Serve `data` as repo/path; returns its real sha256."""
        sha = hashlib.sha256(data).hexdigest()
        self.files[(repo, path)] = _File(data, advertised_sha256 or sha)
        return sha

    def drop_next_get_after(self, n_bytes: int) -> None:
        self.plan.append(("drop", n_bytes))

    def fail_next_get(self, status: int = 503) -> None:
        self.plan.append(("status", status))

    @property
    def port(self) -> int:
        assert self._server is not None, "start the hub first"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_directive(self) -> tuple[str, int] | None:
        with self._lock:
            return self.plan.pop(0) if self.plan else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real hub; a dropped body is then a protocol error
    hub: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        hub = self.hub
        path = urlparse(self.path).path
        with hub._lock:
            hub.requests.append(Request(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["cdn"] and len(parts) == 2:
            found = next((f for f in hub.files.values() if f.sha256 == parts[1]), None)
            if found is None:
                return self._status(404, {"X-Error-Code": "EntryNotFound"})
            return self._send_file(found, body)
        if len(parts) < 5 or parts[2] != "resolve":
            return self._status(404, {"X-Error-Code": "RepoNotFound"})
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        found = hub.files.get((repo, filename))
        if found is None:
            known_repo = any(r == repo for r, _ in hub.files)
            code = "EntryNotFound" if known_repo else "RepoNotFound"
            return self._status(404, {"X-Error-Code": code, "X-Error-Message": f"{code}: {repo}/{filename}"})
        meta = {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{found.sha256}"',
            "X-Linked-Size": str(len(found.data)),
            "ETag": f'"{found.sha256}"',
        }
        if hub.redirect:
            # The hub sends LFS files to its CDN, another host: huggingface_hub reads the
            # metadata off the 302 itself and downloads from Location without following it on HEAD.
            location = f"http://localhost:{hub.port}/cdn/{found.sha256}"
            return self._status(302, {**meta, "Location": location})
        self._send_file(found, body, meta)

    def _send_file(self, f: _File, body: bool, extra: dict[str, str] | None = None) -> None:
        directive = self.hub._next_directive() if body else None
        if directive and directive[0] == "status":
            return self._status(directive[1], {})
        size = len(f.data)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= size:
                return self._status(416, {"Content-Range": f"bytes */{size}"})
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            status = 206
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        payload = f.data[start : end + 1]
        if directive and directive[0] == "drop":
            self.wfile.write(payload[: directive[1]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees the body end early: an interrupted transfer
            return
        self.wfile.write(payload)

    def _status(self, code: int, headers: dict[str, str]) -> None:
        text = json.dumps({"error": headers.get("X-Error-Message", f"HTTP {code}")}).encode()
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)


def tiny_gguf(path: Path, tensor_bytes: int = 4096) -> bytes:
    """A valid GGUF (llama architecture, one f32 tensor of `tensor_bytes`), written with the gguf package."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("edgechat test model")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_tensor("token_embd.weight", np.arange(tensor_bytes // 4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def register_on_hub(
    registry: Path, name: str, repo: str, file: str, sha256: str, *, quant: str = "F32", context_length: int = 256
) -> None:
    """Write a user models.toml whose one entry, `name`, is `file` in `repo` on the fake hub."""
    registry.write_text(
        f"""
[models.{name}]
repo = "{repo}"
default_quant = "{quant}"
context_length = {context_length}
note = "a model on the fake hub"
files.{quant} = {{ file = "{file}", sha256 = "{sha256}" }}
""",
        encoding="utf-8",
    )
