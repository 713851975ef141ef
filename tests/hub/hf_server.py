"""A local stand-in for the Hugging Face Hub's file protocol, for download tests on 127.0.0.1.

It serves `/{repo}/resolve/{revision}/{filename}` (HEAD and GET, with Range) with the headers
huggingface_hub reads: X-Repo-Commit, ETag / X-Linked-Etag, Content-Length. Files are whatever the
test registers; faults (truncation, slow transfers) are switched per path.
"""
from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FakeHub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.truncate: set[tuple[str, str, str]] = set()
        self.chunk_delay_s = 0.0
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo: str, filename: str, data: bytes, revision: str = "main") -> None:
        self.files[(repo, revision, filename)] = data

    @staticmethod
    def commit(revision: str) -> str:
        return hashlib.sha1(revision.encode()).hexdigest()

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:  # keep pytest output clean
                pass

            def _lookup(self):
                path = unquote(self.path.split("?")[0]).lstrip("/")
                if "/resolve/" not in path:
                    return None, None
                repo, rest = path.split("/resolve/", 1)
                revision, _, filename = rest.partition("/")
                key = (repo, revision, filename)
                if key in hub.files:
                    return key, hub.files[key]
                # a revision given as the commit hash of a known branch
                for (r, rev, f), data in hub.files.items():
                    if r == repo and f == filename and hub.commit(rev) == revision:
                        return (r, rev, f), data
                return key, None

            def _headers(self, key, data, length):
                self.send_header("X-Repo-Commit", hub.commit(key[1]))
                etag = hashlib.sha256(data).hexdigest()
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")

            def _missing(self, key):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound" if key else "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path))
                key, data = self._lookup()
                if data is None:
                    return self._missing(key)
                self.send_response(200)
                self._headers(key, data, len(data))
                self.end_headers()

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                key, data = self._lookup()
                if data is None:
                    return self._missing(key)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                body = data[start:]
                self.send_response(206 if start else 200)
                self._headers(key, data, len(body))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if key in hub.truncate:
                    body = body[: len(body) // 2]  # promise everything, send half, hang up
                for i in range(0, len(body), 64 * 1024):
                    self.wfile.write(body[i:i + 64 * 1024])
                    if hub.chunk_delay_s:
                        time.sleep(hub.chunk_delay_s)
                if key in hub.truncate:
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
