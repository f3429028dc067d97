"""CIFAR-10 loader: both sources, one flattening order, preprocessing, cache and errors."""
from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from stability_bench.components import cifar10
from stability_bench.components.cifar10 import (
    CIFAR10FormatError,
    DataNotFoundError,
    find_cifar10,
    load_cifar10,
)

N_PER_BATCH = 20


def _write_batch(path, data, labels):
    # Protocol 2 and the real dict keys, like the official (Python 2) release.
    batch = {b"batch_label": b"fake", b"labels": list(map(int, labels)), b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(len(data))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def fake_release(tmp_path):
    """A tiny official-layout release: two train batches and a test batch (CHW-flattened uint8)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = rng.integers(0, 256, size=(3 * N_PER_BATCH, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, size=3 * N_PER_BATCH)
    _write_batch(folder / "data_batch_1", x[:N_PER_BATCH], y[:N_PER_BATCH])
    _write_batch(folder / "data_batch_2", x[N_PER_BATCH:2 * N_PER_BATCH], y[N_PER_BATCH:2 * N_PER_BATCH])
    _write_batch(folder / "test_batch", x[2 * N_PER_BATCH:], y[2 * N_PER_BATCH:])
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    return tmp_path, x, y


def test_official_release_shape_order_labels(fake_release):
    root, x, y = fake_release
    for data_dir in (root, root / "cifar-10-batches-py"):  # the parent or the folder itself
        xs, ys = load_cifar10(data_dir, standardize=False)
        assert xs.shape == (2 * N_PER_BATCH, 3072) and xs.dtype == np.float64
        assert ys.dtype == np.int64
        np.testing.assert_array_equal(xs, x[: 2 * N_PER_BATCH] / 255.0)  # batch 1 then batch 2
        np.testing.assert_array_equal(ys, y[: 2 * N_PER_BATCH])
    xt, yt = load_cifar10(root, split="test", standardize=False)
    np.testing.assert_array_equal(xt, x[2 * N_PER_BATCH:] / 255.0)
    np.testing.assert_array_equal(yt, y[2 * N_PER_BATCH:])


def test_standardize_and_subset(fake_release):
    root, x, y = fake_release
    xs, ys = load_cifar10(root, subset=25)
    assert xs.shape == (25, 3072)
    np.testing.assert_array_equal(ys, y[:25])
    np.testing.assert_allclose(xs.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(xs.std(axis=0), 1.0, atol=1e-12)  # stats of the subset itself


def test_constant_feature_does_not_give_nan(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((4, 3072), np.uint8)
    data[:, 1] = [0, 10, 20, 30]
    _write_batch(folder / "data_batch_1", data, [0, 1, 2, 3])
    xs, _ = load_cifar10(tmp_path)
    assert np.isfinite(xs).all() and (xs[:, 0] == 0).all()


def test_npz_from_same_images_gives_identical_arrays(fake_release):
    """The npz holds HWC images; both sources must flatten to the same CHW order."""
    root, x, y = fake_release
    hwc = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    npz_dir = root / "npz"
    npz_dir.mkdir()
    n = 2 * N_PER_BATCH
    np.savez(npz_dir / "cifar10-5k.npz", x_train=hwc[:n], y_train=y[:n].astype(np.uint8),
             x_test=hwc[n:], y_test=y[n:].astype(np.uint8))
    for standardize in (False, True):
        a = load_cifar10(root, standardize=standardize)
        for data_dir in (npz_dir, npz_dir / "cifar10-5k.npz"):  # a folder or the file
            b = load_cifar10(data_dir, standardize=standardize)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(load_cifar10(root, split="test")[0], load_cifar10(npz_dir, split="test")[0])


def test_official_release_preferred_over_npz_and_env_var_used(fake_release, monkeypatch):
    root, x, y = fake_release
    np.savez(root / "cifar10-5k.npz", x_train=np.zeros((1, 32, 32, 3), np.uint8), y_train=[0])
    monkeypatch.setenv(cifar10.ENV_VAR, str(root))
    assert find_cifar10() == (root / "cifar-10-batches-py").resolve()
    assert load_cifar10(standardize=False)[0].shape == (2 * N_PER_BATCH, 3072)


def test_default_search_order(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cifar10, "PROJECT_ROOT", tmp_path / "proj")
    monkeypatch.setenv(cifar10.CACHE_ENV, str(tmp_path / "cache"))
    assert cifar10.default_search_paths() == [
        (tmp_path / p).resolve()
        for p in ("data", "../shared/data", "proj/data", "proj/../shared/data", "cache")  # the cache last
    ]


def test_cache_folder_defaults_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar10.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cifar10.cache_dir() == tmp_path / "xdg" / "stability-bench"
    monkeypatch.setenv(cifar10.CACHE_ENV, str(tmp_path / "mine"))
    assert cifar10.cache_dir() == (tmp_path / "mine").resolve()


def test_env_var_is_the_only_place_searched_when_set(tmp_path, monkeypatch):
    """A wrong STABILITY_BENCH_DATA is an error, never a silent fall-back to other data."""
    monkeypatch.setenv(cifar10.ENV_VAR, str(tmp_path / "env"))
    assert cifar10.default_search_paths() == [(tmp_path / "env").resolve()]
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10()
    assert str((tmp_path / "env").resolve()) in str(info.value)


def test_missing_data_lists_every_path(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cifar10, "PROJECT_ROOT", None)  # don't find the real shared data
    monkeypatch.setenv(cifar10.CACHE_ENV, str(tmp_path / "cache"))  # nor a fetched copy
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10()
    msg = str(info.value)
    for base in (tmp_path / "data", tmp_path / "../shared/data"):
        base = base.resolve()
        for p in (base, base / "cifar-10-batches-py", base / "cifar10-5k.npz"):
            assert str(p) in msg
    assert "cs.toronto.edu/~kriz/cifar.html" in msg and cifar10.ENV_VAR in msg
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_pickle_names_the_file(fake_release):
    root, _, _ = fake_release
    bad = root / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(CIFAR10FormatError, match="data_batch_2"):
        load_cifar10(root)


def test_wrong_structure_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"labels": [0]}))
    with pytest.raises(CIFAR10FormatError, match=r"data_batch_1.*b'data'"):
        load_cifar10(tmp_path)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(CIFAR10FormatError, match="data_batch_1.*os.system"):
        load_cifar10(tmp_path)


def test_subset_too_large(fake_release):
    root, _, _ = fake_release
    with pytest.raises(ValueError, match=f"subset=41 .*holds only {2 * N_PER_BATCH}"):
        load_cifar10(root, subset=41)
    with pytest.raises(ValueError, match="positive integer"):
        load_cifar10(root, subset=0)


def test_cached_arrays_cannot_be_corrupted(fake_release):
    root, _, _ = fake_release
    x1, y1 = load_cifar10(root, standardize=False)
    x1[:] = -1
    y1[:] = -1
    x2, y2 = load_cifar10(root, standardize=False)
    assert x2.min() >= 0 and y2.min() >= 0


SHARED = cifar10.PROJECT_ROOT / ".." / "shared" / "data" / "cifar10-5k.npz"


@pytest.fixture
def shared_npz():
    if not SHARED.is_file():
        pytest.skip(f"shared CIFAR-10 subset not found at {SHARED.resolve()}")
    return SHARED


def test_shared_subset(shared_npz):
    x, y = load_cifar10(shared_npz, subset=1000)
    assert x.shape == (1000, 3072) and x.dtype == np.float64 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [100] * 10
    assert np.isfinite(x).all()
    hits = cifar10._load_raw.cache_info().hits
    x2, y2 = load_cifar10(shared_npz, subset=1000)
    assert cifar10._load_raw.cache_info().hits == hits + 1  # served from memory, not disk
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_a_subset_reads_only_the_batches_it_lies_in(fake_release):
    """The start-up a cached release costs: a 1000-image case reads data_batch_1 alone."""
    root, x, _ = fake_release
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not read")
    xs, _ = load_cifar10(root, subset=N_PER_BATCH, standardize=False)
    np.testing.assert_array_equal(xs, x[:N_PER_BATCH] / 255.0)
    with pytest.raises(CIFAR10FormatError, match="data_batch_2"):
        load_cifar10(root, subset=N_PER_BATCH + 1)
