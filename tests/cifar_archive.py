"""Test fixtures for the download path: a tiny CIFAR-10 archive in the official layout, and
a real HTTP server on 127.0.0.1 that serves it (whole, truncated, cut off mid-body).

The archive is what ``cifar-10-python.tar.gz`` holds, shrunk: ``cifar-10-batches-py/``
with ``data_batch_1..5``, ``test_batch`` (protocol-2 pickles of dicts with ``b"data"``:
uint8 (n, 3072), ``b"labels"``, ``b"batch_label"``, ``b"filenames"``) and
``batches.meta``, so the loader reads it as it reads the real one.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

PER_BATCH = 8          # images per batch: 40 training, 8 test
FOLDER = "cifar-10-batches-py"


def _batch(rng: np.random.Generator, label: bytes) -> bytes:
    data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
    return pickle.dumps({b"batch_label": label, b"labels": labels, b"data": data,
                         b"filenames": [b"img%d.png" % i for i in range(PER_BATCH)]}, protocol=2)


def build_archive(seed: int = 0, outside: str | None = None) -> bytes:
    """The tar.gz bytes of a tiny release (``seed`` changes every pixel, so the MD5);
    ``outside``: the name of one more member, placed where a safe extraction refuses it."""
    rng = np.random.default_rng(seed)
    files = {f"data_batch_{i}": _batch(rng, b"training batch %d of 5" % i) for i in range(1, 6)}
    files["test_batch"] = _batch(rng, b"testing batch 1 of 1")
    files["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)],
                                          b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}, protocol=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(folder)
        for name, payload in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size, info.mode, info.mtime = len(payload), 0o644, 0
            tar.addfile(info, io.BytesIO(payload))
        if outside is not None:
            info = tarfile.TarInfo(outside)
            info.size, info.mode, info.mtime = 4, 0o644, 0
            tar.addfile(info, io.BytesIO(b"evil"))
    return buffer.getvalue()


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


@dataclass
class ArchiveServer:
    """A ``ThreadingHTTPServer`` on an ephemeral 127.0.0.1 port. Paths:

    * ``/ok.tar.gz`` — the archive, whole (sent in small pieces with a pause between them,
      so concurrent fetches overlap);
    * ``/truncated.tar.gz`` — its first half, with a ``Content-Length`` that matches (a
      server or proxy that delivered a short file);
    * ``/interrupted.tar.gz`` — ``Content-Length`` of the whole, half the body, then the
      connection closes;
    * ``/other.tar.gz`` — a valid archive with other contents (a wrong checksum).

    ``hits[path]`` counts the GET requests per path.
    """

    archive: bytes
    other: bytes
    delay_s: float = 0.0
    hits: dict = field(default_factory=dict)

    def __post_init__(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                body = {"/ok.tar.gz": owner.archive, "/interrupted.tar.gz": owner.archive,
                        "/truncated.tar.gz": owner.archive[: len(owner.archive) // 2],
                        "/other.tar.gz": owner.other}.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                sent = body[: len(body) // 2] if self.path == "/interrupted.tar.gz" else body
                for start in range(0, len(sent), 4096):
                    self.wfile.write(sent[start:start + 4096])
                    self.wfile.flush()
                    if owner.delay_s:
                        time.sleep(owner.delay_s)
                if self.path == "/interrupted.tar.gz":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port bound, then released): server down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
