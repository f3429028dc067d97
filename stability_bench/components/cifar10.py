"""CIFAR-10 loading for the fully connected benchmarks of Cohen et al. (2021, 2022).

Two sources, tried in this order, give the same arrays:

1. the official python release, a ``cifar-10-batches-py`` folder of pickled
   ``data_batch_1..5`` / ``test_batch`` dicts (``b"data"``: uint8 (10000, 3072) in
   channel-major CHW order, ``b"labels"``: list of ints);
2. an ``.npz`` file like the shared ``cifar10-5k.npz`` (``x_train`` / ``x_test``: uint8
   (N, 32, 32, 3) in HWC order, ``y_train`` / ``y_test``).

Every image is flattened in ONE order, channel-major CHW like the official release
(``x[i, c*1024 + h*32 + w]``); the npz's HWC images are transposed with
``transpose(0, 3, 1, 2)`` before the reshape, so a model sees the same feature at the
same index whichever source was found.

There is never a silent substitute: if no data is found, :class:`DataNotFoundError`
lists every path that was tried and how to get the data.

Data on first use: :func:`ensure_cifar10` (called once per plan, before any run trains:
:func:`stability_bench.plan.prepare_data`) fetches the official archive into the
cache folder when no copy is found in the default places (:mod:`.download`: MD5-checked,
atomic, once under a file lock). Loading (:func:`load_cifar10`, in the hot path of a run)
never touches the network.
"""
from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import numpy as np

from stability_bench.settings import OFFLINE_ENV, env_flag

__all__ = [
    "CIFAR10FormatError",
    "DataNotFoundError",
    "ENV_VAR",
    "cache_dir",
    "default_search_paths",
    "ensure_cifar10",
    "fetch_cifar10",
    "find_cifar10",
    "load_cifar10",
    "verify_cifar10",
]

ENV_VAR = "STABILITY_BENCH_DATA"             # the one place searched (and fetched into) when set
CACHE_ENV = "STABILITY_BENCH_CACHE"          # the cache folder (default: the platform's user cache)
URL_ENV = "STABILITY_BENCH_CIFAR10_URL"      # another URL for the archive (a mirror; tests)
BATCHES_DIR = "cifar-10-batches-py"
NPZ_NAME = "cifar10-5k.npz"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# The MD5 published on the CIFAR page (URL) for cifar-10-python.tar.gz, the checksum the
# download is verified against. No SHA-256 is published there, and none could be computed
# here (no network), so none is claimed.
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
N_FEATURES = 3 * 32 * 32
N_CLASSES = 10

# The project root (parent of the package directory), searched besides the cwd so that
# the shared data is found whichever directory pytest or a script runs from.
# Tests set it to None to search the cwd and the environment variable only.
PROJECT_ROOT: Path | None = Path(__file__).resolve().parents[2]


class DataNotFoundError(FileNotFoundError):
    """No CIFAR-10 data at any searched path; the message lists them and how to fix it."""

    # One line on how to get the data, for summaries that name the files that lacked it.
    hint = (f"get CIFAR-10 with `stability-bench data fetch`, or set {ENV_VAR} to a folder holding "
            f"{BATCHES_DIR}/ or to a {NPZ_NAME} file (offline)")

    def __init__(self, tried: list[Path], detail: str = "", download: str = ""):
        self.tried, self.detail, self.download = list(tried), detail, download
        lines = [f"CIFAR-10 not found{': ' + detail if detail else ''}. Looked for:"]
        lines += [f"  {p}" for p in self.tried]
        if download:
            lines.append(download)
        lines.append(
            f"Download the official python release (cifar-10-python.tar.gz) from {URL} and "
            f"untar it into a data dir (giving <dir>/{BATCHES_DIR}/), then pass data_dir=<dir> "
            f"or set {ENV_VAR}=<dir>; or point either at a {NPZ_NAME} file. "
            f"`stability-bench data fetch` downloads it into {cache_dir()}."
        )
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror)
        return self.args[0]

    def __reduce__(self):  # rebuilt from its fields in another process (worker pools pickle it)
        return type(self), (self.tried, self.detail, self.download)


class CIFAR10FormatError(ValueError):
    """A CIFAR-10 file exists but is corrupt or not laid out like the official release."""


def cache_dir() -> Path:
    """Where a fetched copy goes (and is looked for last): ``$STABILITY_BENCH_CACHE``, else
    the platform's user cache folder (``$XDG_CACHE_HOME/stability-bench`` or
    ``~/.cache/stability-bench`` on Linux)."""
    from stability_bench.components.download import user_cache_dir

    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser().resolve() if value else user_cache_dir()


def default_search_paths() -> list[Path]:
    """Where to look when no ``data_dir`` is given, in order, without duplicates.

    ``$STABILITY_BENCH_DATA`` alone when it is set (a wrong setting is an error, not a
    silent fall-back to other data); otherwise ``./data`` and ``../shared/data`` relative
    to the current directory, then the same two relative to :data:`PROJECT_ROOT`, then the
    cache folder (:func:`cache_dir`), where ``stability-bench data fetch`` puts it.
    """
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser().resolve()]
    bases = [Path.cwd()] + ([PROJECT_ROOT] if PROJECT_ROOT is not None else [])
    paths = [base / rel for base in bases for rel in ("data", "../shared/data")] + [cache_dir()]
    unique: dict[Path, None] = {}
    for p in paths:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def _is_batches_dir(folder: Path) -> bool:
    return (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file()


def _locate(candidate: Path, tried: list[Path]) -> Path | None:
    """The data source at or inside ``candidate`` (official folder first), recording what was tried."""
    tried.append(candidate)
    if candidate.is_file() or candidate.suffix == ".npz":
        return candidate if candidate.is_file() and candidate.suffix == ".npz" else None
    if _is_batches_dir(candidate):
        return candidate
    for path, exists in ((candidate / BATCHES_DIR, Path.is_dir), (candidate / NPZ_NAME, Path.is_file)):
        tried.append(path)
        if exists(path):
            return path
    return None


def find_cifar10(data_dir: str | os.PathLike | None = None) -> Path:
    """The ``cifar-10-batches-py`` folder or ``.npz`` file to load.

    ``data_dir`` may be the batches folder, its parent, an ``.npz`` file, or a folder
    holding ``cifar10-5k.npz``; when given, nothing else is searched.
    """
    candidates = [Path(data_dir).expanduser().resolve()] if data_dir is not None else default_search_paths()
    tried: list[Path] = []
    for candidate in candidates:
        found = _locate(candidate, tried)
        if found is not None:
            return found
    raise DataNotFoundError(tried, f"data_dir={str(data_dir)!r}" if data_dir is not None else "")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, bytes and numpy arrays: a data file must not run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file as (uint8 (n, 3072), int64 (n,)), with its structure checked."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncated, garbage, or foreign pickles fail in many ways
        raise CIFAR10FormatError(f"{path}: not a readable CIFAR-10 batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise CIFAR10FormatError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == N_FEATURES):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CIFAR10FormatError(f"{path}: b'data' should be uint8 (n, {N_FEATURES}), got {desc}")
    _check_labels(path, labels, len(data))
    return data, labels.astype(np.int64)


def _check_labels(path: Path, labels: np.ndarray, n: int) -> None:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise CIFAR10FormatError(f"{path}: expected {n} integer labels, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise CIFAR10FormatError(f"{path}: labels outside 0..{N_CLASSES - 1}")


def _batch_files(folder: Path, split: str) -> list[Path]:
    if split == "test":
        files = [folder / "test_batch"]
    else:  # data_batch_1, 2, ... without gaps (the official release has 5)
        files = []
        while (folder / f"data_batch_{len(files) + 1}").is_file() and len(files) < 5:
            files.append(folder / f"data_batch_{len(files) + 1}")
        files = files or [folder / "data_batch_1"]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DataNotFoundError(missing, f"incomplete {BATCHES_DIR} folder {folder}")
    return files


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z[f"x_{split}"], z[f"y_{split}"]
    except Exception as e:
        raise CIFAR10FormatError(f"{path}: cannot read x_{split}/y_{split} ({type(e).__name__}: {e})") from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise CIFAR10FormatError(f"{path}: x_{split} should be uint8 (n, 32, 32, 3) HWC, got {x.dtype} {x.shape}")
    _check_labels(path, y, len(x))
    # HWC -> CHW before flattening: the official release's order.
    return x.transpose(0, 3, 1, 2).reshape(len(x), N_FEATURES), y.astype(np.int64)


def _stamp(path: Path) -> tuple[int, ...]:
    """Modification times, so a rewritten file is not served stale from the cache."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple(p.stat().st_mtime_ns for p in files if p.is_file())


@functools.lru_cache(maxsize=8)
def _load_raw(path: Path, split: str, stamp: tuple[int, ...],
              subset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (CHW-flattened) and int64 labels; read-only because they are cached.
    From the official folder only the batches the first ``subset`` images lie in are read
    (a 1000-image case reads data_batch_1, 31 MB, not all five: each worker process loads
    its own copy, so this is the start-up a cached release costs)."""
    if path.is_dir():
        parts, count = [], 0
        for file in _batch_files(path, split):
            if subset is not None and count >= subset:
                break
            parts.append(_read_batch(file))
            count += len(parts[-1][1])
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        x, y = _read_npz(path, split)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    subset: int | None = None,
    split: str = "train",
    standardize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """x: float64 array (N, 3072), CHW-flattened; y: int64 labels (N,).

    ``subset=N`` keeps the first N examples (class-balanced in the shared npz). Pixels are
    scaled to [0, 1]; with ``standardize`` (Cohen et al.) each feature is then centred and
    divided by its standard deviation, statistics taken on the loaded (sub)set.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset < 1):
        raise ValueError(f"subset must be a positive integer or None, got {subset!r}")
    path = find_cifar10(data_dir)
    x_raw, y_raw = _load_raw(path, split, _stamp(path), None if subset is None else int(subset))
    if subset is not None:
        if subset > len(x_raw):
            raise ValueError(f"subset={subset} but {path} holds only {len(x_raw)} {split} examples")
        x_raw, y_raw = x_raw[:subset], y_raw[:subset]
    x = x_raw.astype(np.float64) / 255.0
    if standardize:
        std = x.std(axis=0)
        std[std == 0] = 1.0  # a constant feature stays 0 instead of becoming NaN
        x = (x - x.mean(axis=0)) / std
    return x, y_raw.copy()


# ----------------------------------------------------------------- data on first use
def archive_url() -> str:
    """The archive's URL: ``$STABILITY_BENCH_CIFAR10_URL`` (a mirror, a test server), else
    the official one."""
    return os.environ.get(URL_ENV) or ARCHIVE_URL


def fetch_target() -> Path:
    """Where ``stability-bench data fetch`` puts the release: ``$STABILITY_BENCH_DATA``
    when set (the one place then searched), else :func:`cache_dir`."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return cache_dir()
    path = Path(value).expanduser().resolve()
    if path.suffix == ".npz" or path.is_file():
        raise DataNotFoundError([path], f"{ENV_VAR} names a file ({path}); the release is a folder: unset it, "
                                        f"or point it at a folder to fetch into")
    return path


def fetch_cifar10(target: Path | None = None, *, url: str | None = None, md5: str = "",
                  progress=None) -> Path:
    """Download the official release into ``target`` (default :func:`fetch_target`) unless
    an intact fetched copy is already there; the ``cifar-10-batches-py`` folder. Raises
    :class:`~stability_bench.components.download.DownloadError` (URL, cause)."""
    from stability_bench.components.download import fetch_archive

    return fetch_archive(url or archive_url(), md5 or ARCHIVE_MD5, target or fetch_target(), BATCHES_DIR, progress)


def _no_auto_fetch(data_dir) -> str:
    """Why a missing data set is not downloaded on first use ('' when it is)."""
    if data_dir is not None:
        return "the case names its data_dir, and only it is used"
    if os.environ.get(ENV_VAR):
        return f"{ENV_VAR} is set, and only it is used (`stability-bench data fetch` fetches into it)"
    if env_flag(OFFLINE_ENV):
        return f"{OFFLINE_ENV} is set"
    return ""


# A failed download, by (URL, cache folder): asked again in the same process (the next case
# file, the next plan), the same error comes back at once instead of a second attempt.
_FAILED: dict[tuple[str, str], DataNotFoundError] = {}


def offline_options() -> str:
    return (f"Offline: put the 5k subset {NPZ_NAME} in ./data or ../shared/data (from the project root or "
            f"the working directory), or set {ENV_VAR} to that file or to a folder holding {BATCHES_DIR}/; "
            f"{OFFLINE_ENV}=1 skips the download attempt.")


def ensure_cifar10(data_dir: str | os.PathLike | None = None, progress=None) -> Path:
    """The data :func:`load_cifar10` will read, downloaded first if it is nowhere to be
    found and may be fetched (no ``data_dir``, no ``$STABILITY_BENCH_DATA``, not
    ``$STABILITY_BENCH_OFFLINE``). Called before runs start, never inside one. A failure
    is a :class:`DataNotFoundError` naming the URL, the cache folder, every place searched
    and the offline options; it is raised again, without a new attempt, for the rest of
    the process."""
    from stability_bench.components.download import DownloadError

    try:
        return find_cifar10(data_dir)
    except DataNotFoundError as missing:
        why_not = _no_auto_fetch(data_dir)
        if why_not:
            raise DataNotFoundError(missing.tried, missing.detail, f"Not downloaded: {why_not}.") from None
        url, target = archive_url(), cache_dir()
        key = (url, str(target))
        if key not in _FAILED:
            try:
                fetch_cifar10(target, url=url, progress=progress)
            except (DownloadError, OSError) as exc:
                _FAILED[key] = DataNotFoundError(
                    missing.tried, missing.detail,
                    f"Downloading into the cache folder {target} failed: {exc}\n{offline_options()}")
        if key in _FAILED:
            raise _FAILED[key] from None
    return find_cifar10(data_dir)


def _sidecar_sha256(path: Path) -> str | None:
    """The SHA-256 in ``<file>.sha256`` beside ``path`` (``sha256sum`` format), if any."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return None
    words = sidecar.read_text().split()
    return words[0].lower() if words else ""


def verify_cifar10(path: Path) -> list[str]:
    """Check the data at ``path`` (what :func:`find_cifar10` returns) the way a run would
    read it, and by hash where a reference exists: a fetched folder against its manifest,
    an ``.npz`` against the ``.sha256`` file beside it. Lines saying what was checked;
    :class:`CIFAR10FormatError` naming the first problem."""
    from stability_bench.components.download import MANIFEST, check_manifest, file_digest

    lines = []
    if path.is_dir():
        if (path / MANIFEST).is_file():
            problems = check_manifest(path)
            if problems:
                raise CIFAR10FormatError("; ".join(problems) + " — `stability-bench data fetch` fetches it again")
            lines.append(f"every file matches the SHA-256 recorded when it was fetched ({path / MANIFEST})")
        else:
            lines.append(f"no {MANIFEST}: fetched by hand, so its files are checked by reading them only")
        counts = {split: sum(len(_read_batch(p)[1]) for p in _batch_files(path, split))
                  for split in ("train", "test")}
    else:
        expected = _sidecar_sha256(path)
        if expected is not None:
            actual = file_digest(path)
            if actual != expected:
                raise CIFAR10FormatError(f"{path}: SHA-256 {actual}, but {path.name}.sha256 says {expected}")
            lines.append(f"SHA-256 matches {path.name}.sha256")
        counts = {split: len(_read_npz(path, split)[1]) for split in ("train", "test")}
    lines.append(f"readable: {counts['train']:,} training and {counts['test']:,} test images")
    return lines


def where_report() -> tuple[Path | None, list[str]]:
    """(the data a run would load or None, lines saying where it was looked for, where a
    fetch goes and from where): ``stability-bench data where``."""
    try:
        found = find_cifar10()
    except DataNotFoundError:
        found = None
    places = default_search_paths()
    lines = [f"CIFAR-10: {found}" if found is not None else "CIFAR-10: not found"]
    lines.append(f"searched, in order{f' ({ENV_VAR} is set: only it)' if os.environ.get(ENV_VAR) else ''}, "
                 f"each for the data itself, a {BATCHES_DIR}/ folder in it, or {NPZ_NAME} in it:")
    lines += [f"  {place}" for place in places]
    lines.append(f"cache folder ({CACHE_ENV}, else the user cache): {cache_dir()}")
    try:
        target = str(fetch_target())
    except DataNotFoundError as exc:
        target = f"none: {exc.detail}"
    lines.append(f"`stability-bench data fetch` downloads {archive_url()} (MD5 {ARCHIVE_MD5}) into {target}")
    try:
        reason = _no_auto_fetch(None)
    except ValueError as exc:  # a malformed $STABILITY_BENCH_OFFLINE
        reason = str(exc)
    lines.append("a run with no data fetches it first" + (f": no, {reason}" if reason else ": yes, into the cache folder"))
    return found, lines

