"""Fetching a data archive once, safely: checksum-verified, atomic, under a file lock.

The one path by which stability-bench downloads anything (today: the CIFAR-10 release,
:mod:`stability_bench.components.cifar10`). Its guarantees:

* **verified**: the archive's MD5 is checked against the published value (and its length
  against ``Content-Length``) before anything is extracted;
* **atomic**: the archive is written to a temporary file beside its destination, extracted
  into a temporary folder there, and only a complete, verified folder is moved into place
  with :func:`os.replace` — a partial or corrupt download never leaves a folder under the
  final name, so nothing that looks valid;
* **once**: an exclusive file lock (``fcntl.flock`` on POSIX; ``msvcrt.locking`` on
  Windows) serialises processes that ask at the same moment (xdist workers, ``--jobs``,
  Dask workers on one host); the ones that waited find the folder in place and return;
* **quiet off a terminal**: a progress line on stderr only when stderr is a terminal.

Standard library only (no new dependency).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

MANIFEST = ".stability-bench-manifest.json"   # written into a folder this module extracted
CHUNK = 1 << 16
TIMEOUT_S = 30.0                              # per socket operation (connect, each read)


class DownloadError(OSError):
    """A download or extraction that failed; the message names the URL, the destination and
    the cause. Nothing valid-looking is left behind."""

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return self.args[0]


def user_cache_dir(app: str = "stability-bench") -> Path:
    """The platform's per-user cache folder for ``app``: ``$XDG_CACHE_HOME/app`` or
    ``~/.cache/app`` (Linux and other POSIX), ``~/Library/Caches/app`` (macOS),
    ``%LOCALAPPDATA%\\app`` (Windows)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / app
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / app
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / app


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) until the block ends; blocks
    while another process holds it. The lock dies with its process, so a killed download
    never leaves a stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if sys.platform == "win32":  # pragma: no cover - not exercised on POSIX CI
            import msvcrt

            handle.seek(0)
            while True:  # LK_LOCK gives up after ~10 s (EDEADLOCK): keep waiting, as flock does
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EDEADLOCK, errno.EACCES):
                        raise
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Progress:
    """``name: 45% 76.5/170.5 MB`` on one updating stderr line, at most 10 times a second;
    silent when stderr is not a terminal (logs and CI stay clean)."""

    def __init__(self, name: str, total: int | None, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.name, self.total, self.shown = name, total, 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown < 0.1):
            return
        self.shown = now
        if self.total:
            text = f"{100 * done / self.total:3.0f}% {done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        else:
            text = f"{done / 1e6:.1f} MB"
        self.stream.write(f"\rdownloading {self.name}: {text}\x1b[K" + ("\n" if final else ""))
        self.stream.flush()


def download(url: str, dest: Path, *, md5: str, progress: Callable[[int, bool], None] | None = None,
             timeout: float = TIMEOUT_S) -> None:
    """Download ``url`` to the file ``dest``, verified: a temporary file beside ``dest``
    is renamed into place only once its length and MD5 are right; on any failure it is
    removed and :class:`DownloadError` says what went wrong."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False)
    part = Path(handle.name)
    try:
        with handle:
            received, digest = _stream(url, dest, handle, progress, timeout)
        if digest != md5.lower():
            raise DownloadError(f"{url}: checksum mismatch: MD5 {digest}, expected {md5} ({received:,} bytes "
                                f"received); nothing was kept in {dest.parent}")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _stream(url: str, dest: Path, handle, progress, timeout: float) -> tuple[int, str]:
    """Copy the response body into ``handle``; (bytes received, their MD5)."""
    digest, received = hashlib.md5(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            show = progress or Progress(dest.name, total)
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                show(received)
            show(received, True)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: cannot connect ({exc.reason})") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
        raise DownloadError(f"{url}: the download broke off after {received:,} bytes "
                            f"({type(exc).__name__}: {exc})") from None
    if total is not None and received != total:
        raise DownloadError(f"{url}: the download broke off: {received:,} of {total:,} bytes received")
    return received, digest.hexdigest()


def _safe_members(tar: tarfile.TarFile, folder: str) -> list[tarfile.TarInfo]:
    """The archive's regular files and folders below ``folder``; anything else (links,
    devices, absolute or ``..`` paths, files outside ``folder``) is refused."""
    members = []
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != folder:
            raise DownloadError(f"unexpected archive member {member.name!r} (expected files below {folder}/)")
        if not (member.isfile() or member.isdir()):
            raise DownloadError(f"archive member {member.name!r} is not a regular file or folder")
        members.append(member)
    return members


def write_manifest(folder: Path, source: dict) -> None:
    """Record each file's size and SHA-256 (and where they came from) in ``folder``, so
    :func:`check_manifest` can later tell an intact folder from a damaged one."""
    files = {p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"source": source, "files": files}, indent=1) + "\n")


def check_manifest(folder: Path) -> list[str]:
    """Problems of ``folder`` against its manifest (empty: intact). A folder without a
    manifest is one problem, saying so."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return [f"{folder}: no {MANIFEST} (not fetched by stability-bench): its files cannot be checked by hash"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{folder / MANIFEST}: unreadable ({type(exc).__name__}: {exc})"]
    problems = []
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != expected["size"] or file_digest(path) != expected["sha256"]:
            problems.append(f"{path}: changed since it was fetched (size or SHA-256 differs)")
    return problems


def fetch_archive(url: str, md5: str, target: Path, folder: str,
                  progress: Callable[[int, bool], None] | None = None) -> Path:
    """``target/folder``, fetched if absent: ``url`` (a ``.tar.gz`` whose members all lie
    below ``folder/``) is downloaded, MD5-checked, extracted beside ``target/folder`` and
    moved into place, all under a lock on ``target/.folder.lock``. A process that waited
    for the lock finds the folder in place (its manifest intact) and downloads nothing;
    a folder there that fails its manifest check is replaced."""
    final = target / folder
    with file_lock(target / f".{folder}.lock"):
        if final.is_dir() and not check_manifest(final):
            return final
        for stale in target.glob(f".*{folder}.*.part"):   # left by a killed process (we hold the lock)
            stale.unlink(missing_ok=True)
        for stale in target.glob(f".{folder}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        archive = target / f".{folder}.download.tar.gz"
        scratch = Path(tempfile.mkdtemp(dir=target, prefix=f".{folder}.", suffix=".tmp"))
        try:
            download(url, archive, md5=md5, progress=progress)
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(scratch, members=_safe_members(tar, folder), **safe)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DownloadError(f"{url}: the archive (MD5 verified) could not be extracted: "
                                    f"{type(exc).__name__}: {exc}") from None
            extracted = scratch / folder
            if not extracted.is_dir():
                raise DownloadError(f"{url}: the archive holds no {folder}/ folder")
            write_manifest(extracted, {"url": url, "md5": md5})
            if final.exists():  # damaged or foreign: move it aside, then drop it
                aside = scratch / "previous"
                os.replace(final, aside)
            os.replace(extracted, final)
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)
    return final
