"""Data on first use, for real: CIFAR-10 fetched from an HTTP server on 127.0.0.1 started by
the test (tests/cifar_archive.py), through the same code that fetches the official archive.

Success, wrong checksum, truncated body, server down, a download cut off mid-body, two
processes fetching at once; then the same path as a user meets it: a run that fetches on
first use (once, before the runs), the `data` commands, and the one-line summary and exit 5
when the data cannot be had.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cifar_archive
from stability_bench.cli import EXIT_NO_DATA, main
from stability_bench.components import cifar10
from stability_bench.components.download import MANIFEST, DownloadError, Progress

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_CASES = Path(__file__).parent / "data" / "plugin"


@pytest.fixture(scope="module")
def server():
    srv = cifar_archive.ArchiveServer(cifar_archive.build_archive(0), cifar_archive.build_archive(1))
    yield srv
    srv.close()


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """No data anywhere the loader looks (no shared data, no $STABILITY_BENCH_DATA), an
    empty cache folder of the test's own, and no failure remembered from another test."""
    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.delenv(cifar10.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(cifar10.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10, "PROJECT_ROOT", None)
    monkeypatch.setattr(cifar10, "_FAILED", {})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "cache"


def leftovers(folder: Path) -> list[str]:
    """What a fetch left in ``folder`` besides its lock file and the finished folder."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in (".cifar-10-batches-py.lock", "cifar-10-batches-py"))


# ------------------------------------------------------------------ the download itself
def test_fetch_verifies_extracts_and_the_loader_reads_it(server, fresh):
    # what a process killed mid-fetch leaves: a partial download and a half-extracted folder
    fresh.mkdir(parents=True)
    (fresh / "..cifar-10-batches-py.download.tar.gz.k1ll3d.part").write_bytes(b"partial")
    (fresh / ".cifar-10-batches-py.k1ll3d.tmp" / "cifar-10-batches-py").mkdir(parents=True)
    folder = cifar10.fetch_cifar10(url=server.url("/ok.tar.gz"), md5=cifar_archive.md5(server.archive))
    assert folder == fresh / "cifar-10-batches-py" and (folder / MANIFEST).is_file()
    assert sorted(p.name for p in folder.iterdir() if p.name != MANIFEST) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    assert leftovers(fresh) == []
    assert cifar10.find_cifar10() == folder  # the cache folder is on the search path
    x, y = cifar10.load_cifar10(standardize=False)
    assert x.shape == (5 * cifar_archive.PER_BATCH, 3072) and y.shape == (5 * cifar_archive.PER_BATCH,)
    assert any("SHA-256 recorded" in line for line in cifar10.verify_cifar10(folder))
    # an intact copy is not fetched again
    hits = server.hits.get("/ok.tar.gz", 0)
    assert cifar10.fetch_cifar10(url=server.url("/ok.tar.gz"), md5=cifar_archive.md5(server.archive)) == folder
    assert server.hits.get("/ok.tar.gz", 0) == hits


@pytest.mark.parametrize("path, expected", [
    ("/other.tar.gz", "checksum mismatch"),          # a valid archive, not the one published
    ("/truncated.tar.gz", "checksum mismatch"),      # a short body whose length the server claims
    ("/interrupted.tar.gz", "broke off"),           # the connection closes mid-body
])
def test_a_bad_download_leaves_nothing_that_looks_valid(server, fresh, path, expected):
    with pytest.raises(DownloadError) as info:
        cifar10.fetch_cifar10(url=server.url(path), md5=cifar_archive.md5(server.archive))
    message = str(info.value)
    assert expected in message and server.url(path) in message and "\n" not in message
    assert not (fresh / "cifar-10-batches-py").exists()
    assert leftovers(fresh) == []
    with pytest.raises(cifar10.DataNotFoundError):
        cifar10.find_cifar10()


@pytest.mark.parametrize("body, expected", [
    (lambda archive: archive[: len(archive) // 2], "could not be extracted"),   # the right MD5 of a broken tar
    (lambda archive: cifar_archive.build_archive(0, outside="cifar-10-batches-py/../../escaped"),
     "unexpected archive member"),
])
def test_an_archive_that_cannot_be_extracted_safely_leaves_nothing(fresh, tmp_path, body, expected):
    """Past the checksum, extraction happens in a scratch folder: a broken archive, or one
    with a member outside its folder, leaves no folder under the final name, nothing outside."""
    payload = body(cifar_archive.build_archive(0))
    srv = cifar_archive.ArchiveServer(payload, b"")
    try:
        with pytest.raises(DownloadError, match=expected):
            cifar10.fetch_cifar10(url=srv.url("/ok.tar.gz"), md5=cifar_archive.md5(payload))
    finally:
        srv.close()
    assert not (fresh / "cifar-10-batches-py").exists() and leftovers(fresh) == []
    assert not (tmp_path / "escaped").exists() and not (fresh.parent / "escaped").exists()


def test_server_down(fresh):
    url = cifar_archive.closed_port_url()
    with pytest.raises(DownloadError, match="cannot connect") as info:
        cifar10.fetch_cifar10(url=url, md5="0" * 32)
    assert url in str(info.value)
    assert leftovers(fresh) == [] and not (fresh / "cifar-10-batches-py").exists()


def test_a_damaged_fetched_copy_is_found_by_verify_and_replaced_by_fetch(server, fresh):
    md5 = cifar_archive.md5(server.archive)
    folder = cifar10.fetch_cifar10(url=server.url("/ok.tar.gz"), md5=md5)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(cifar10.CIFAR10FormatError, match="data_batch_3"):
        cifar10.verify_cifar10(folder)
    hits = server.hits.get("/ok.tar.gz", 0)
    cifar10.fetch_cifar10(url=server.url("/ok.tar.gz"), md5=md5)
    assert server.hits["/ok.tar.gz"] == hits + 1
    cifar10.verify_cifar10(folder)
    assert leftovers(fresh) == []


FETCH = """
import os, sys, time
from pathlib import Path
from stability_bench.components import cifar10
gate = Path(sys.argv[4])
(gate / f"ready-{os.getpid()}").touch()        # imported: ready
while not (gate / "go").exists():               # both start fetching at the same moment
    time.sleep(0.005)
print(cifar10.fetch_cifar10(Path(sys.argv[1]), url=sys.argv[2], md5=sys.argv[3]))
"""


def test_two_processes_fetching_at_once_download_once_and_both_succeed(tmp_path):
    # its own server with a slow body (about a second); both processes, once imported, start
    # at the same moment, so the second asks while the first downloads
    srv = cifar_archive.ArchiveServer(cifar_archive.build_archive(0), b"", delay_s=0.02)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        gate = tmp_path / "gate"
        gate.mkdir()
        args = [sys.executable, "-c", FETCH, str(tmp_path / "cache"), srv.url("/ok.tar.gz"),
                cifar_archive.md5(srv.archive), str(gate)]
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        deadline = time.monotonic() + 240
        while len(list(gate.glob("ready-*"))) < 2 and time.monotonic() < deadline \
                and all(p.poll() is None for p in procs):
            time.sleep(0.01)
        (gate / "go").touch()
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        srv.close()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {out.strip() for out, _ in outs} == {str(tmp_path / "cache" / "cifar-10-batches-py")}
    assert srv.hits == {"/ok.tar.gz": 1}
    assert leftovers(tmp_path / "cache") == []


# ------------------------------------------------------------- first use, from a run
def tiny_cases(folder: Path, *names: str) -> Path:
    """Copies of tests/data/plugin/cifar_tiny.yaml under the given case names."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (PLUGIN_CASES / "cifar_tiny.yaml").read_text()
    for name in names:
        (folder / f"{name}.yaml").write_text(text.replace("name: cifar_tiny", f"name: {name}"))
    return folder


def test_a_run_fetches_on_first_use_once_before_training(server, fresh, monkeypatch, capsys):
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", cifar_archive.md5(server.archive))
    monkeypatch.setenv(cifar10.URL_ENV, server.url("/ok.tar.gz"))
    cases = tiny_cases(Path("cases"), "tiny_a", "tiny_b")
    hits = server.hits.get("/ok.tar.gz", 0)
    assert main(["run", str(cases)]) == 0
    assert server.hits["/ok.tar.gz"] == hits + 1        # two case files, one download
    assert "2 passed, 0 failed" in capsys.readouterr().out
    assert main(["run", str(cases)]) == 0
    assert server.hits["/ok.tar.gz"] == hits + 1        # cached: not fetched again
    assert (fresh / "cifar-10-batches-py" / MANIFEST).is_file()


def test_without_data_or_network_one_line_names_the_files_and_exit_5(fresh, monkeypatch, capfd):
    """The README's main command on a machine with neither: the reason once (not once per
    run), one summary line naming the case files and how to get the data, exit 5; the
    runs that need no data still ran (in worker processes: --jobs 2)."""
    url = cifar_archive.closed_port_url()
    monkeypatch.setenv(cifar10.URL_ENV, url)
    cases = tiny_cases(Path("cases"), "tiny_a", "tiny_b")
    (cases / "quad_pass.yaml").write_text((PLUGIN_CASES / "quad_pass.yaml").read_text())
    assert main(["run", str(cases), "--jobs", "2", "--device", "cpu"]) == EXIT_NO_DATA == 5
    out, err = capfd.readouterr()
    assert err.count("CIFAR-10 not found") == 1 and err.count(url) == 1
    for needed in (str(fresh), cifar10.NPZ_NAME, cifar10.ENV_VAR, "cannot connect", "Offline"):
        assert needed in err
    summary = [line for line in out.splitlines() if line.startswith("could not run here")]
    assert summary == [f"could not run here (no data): {cases / 'tiny_a.yaml'}, {cases / 'tiny_b.yaml'} (2 runs) — "
                       f"{cifar10.DataNotFoundError.hint}"]
    assert "4 passed, 0 failed, 2 could not run here" in out
    assert "Traceback" not in out + err


def test_no_automatic_download_where_the_user_chose_the_data(server, fresh, monkeypatch, tmp_path):
    """$STABILITY_BENCH_DATA (or a case's data_dir) is the one place used; $STABILITY_BENCH_OFFLINE=1
    forbids the attempt: the error says why nothing was downloaded, and nothing was."""
    monkeypatch.setenv(cifar10.URL_ENV, server.url("/ok.tar.gz"))
    hits = dict(server.hits)
    monkeypatch.setenv(cifar10.ENV_VAR, str(tmp_path / "mine"))
    with pytest.raises(cifar10.DataNotFoundError, match=f"Not downloaded: {cifar10.ENV_VAR} is set"):
        cifar10.ensure_cifar10()
    monkeypatch.delenv(cifar10.ENV_VAR)
    with pytest.raises(cifar10.DataNotFoundError, match="Not downloaded: the case names its data_dir"):
        cifar10.ensure_cifar10(tmp_path / "mine")
    monkeypatch.setenv(cifar10.OFFLINE_ENV, "1")
    with pytest.raises(cifar10.DataNotFoundError, match=f"Not downloaded: {cifar10.OFFLINE_ENV} is set"):
        cifar10.ensure_cifar10()
    monkeypatch.setenv(cifar10.OFFLINE_ENV, "maybe")
    with pytest.raises(ValueError, match=f"{cifar10.OFFLINE_ENV}='maybe': expected 1 or 0"):
        cifar10.ensure_cifar10()
    assert server.hits == hits and not (fresh / "cifar-10-batches-py").exists()


def test_a_failed_download_is_not_retried_within_the_process(server, fresh, monkeypatch):
    monkeypatch.setenv(cifar10.URL_ENV, server.url("/interrupted.tar.gz"))
    hits = server.hits.get("/interrupted.tar.gz", 0)
    with pytest.raises(cifar10.DataNotFoundError) as first:
        cifar10.ensure_cifar10()
    with pytest.raises(cifar10.DataNotFoundError) as second:
        cifar10.ensure_cifar10()
    assert server.hits["/interrupted.tar.gz"] == hits + 1
    assert str(first.value) == str(second.value) and "broke off" in str(first.value)


# ------------------------------------------------------------------- the data commands
def test_data_commands_fetch_verify_where(server, fresh, monkeypatch, capsys):
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", cifar_archive.md5(server.archive))
    monkeypatch.setenv(cifar10.URL_ENV, server.url("/ok.tar.gz"))
    assert main(["data", "where"]) == EXIT_NO_DATA
    out = capsys.readouterr().out
    assert "CIFAR-10: not found" in out and str(fresh) in out and server.url("/ok.tar.gz") in out

    assert main(["data", "fetch"]) == 0
    out = capsys.readouterr().out
    assert f"CIFAR-10: {fresh / 'cifar-10-batches-py'}" in out and "40 training and 8 test images" in out

    assert main(["data", "where"]) == 0
    assert f"CIFAR-10: {fresh / 'cifar-10-batches-py'}" in capsys.readouterr().out
    assert main(["data", "verify"]) == 0
    assert "SHA-256 recorded" in capsys.readouterr().out

    (fresh / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    assert main(["data", "verify"]) == 1
    err = capsys.readouterr().err
    assert "test_batch" in err and "data fetch" in err and "Traceback" not in err


def test_data_fetch_failing_says_where_and_how_to_work_offline(fresh, monkeypatch, capsys):
    url = cifar_archive.closed_port_url()
    monkeypatch.setenv(cifar10.URL_ENV, url)
    assert main(["data", "fetch"]) == EXIT_NO_DATA
    err = capsys.readouterr().err
    assert url in err and cifar10.NPZ_NAME in err and cifar10.ENV_VAR in err and "Traceback" not in err
    assert not (fresh / "cifar-10-batches-py").exists()


def test_data_verify_checks_an_npz_against_its_sha256(fresh, tmp_path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / cifar10.NPZ_NAME
    np.savez(npz, x_train=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), y_train=np.arange(6) % 10,
             x_test=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), y_test=np.arange(2))
    import hashlib

    sidecar = npz.with_name(npz.name + ".sha256")
    sidecar.write_text(hashlib.sha256(npz.read_bytes()).hexdigest() + "  cifar10-5k.npz\n")
    assert main(["data", "verify", str(npz)]) == 0
    assert "SHA-256 matches" in capsys.readouterr().out
    sidecar.write_text("0" * 64 + "\n")
    assert main(["data", "verify", str(npz)]) == 1
    assert f"{npz}: SHA-256" in capsys.readouterr().err


def test_the_progress_line_shows_on_a_terminal_only():
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    quiet, terminal = Stream(False), Stream(True)
    for stream in (quiet, terminal):
        show = Progress("cifar-10-python.tar.gz", 2_000_000, stream)
        show(1_000_000)
        show(2_000_000, True)
    assert quiet.getvalue() == ""
    assert "downloading cifar-10-python.tar.gz:  50% 1.0/2.0 MB" in terminal.getvalue()
    assert terminal.getvalue().endswith("100% 2.0/2.0 MB\x1b[K\n")


def test_baseline_without_data_writes_nothing_and_exits_5(fresh, monkeypatch, capsys):
    monkeypatch.setenv(cifar10.URL_ENV, cifar_archive.closed_port_url())
    cases = tiny_cases(Path("cases"), "tiny_a")
    assert main(["baseline", str(cases)]) == EXIT_NO_DATA
    err = capsys.readouterr().err
    assert "no baseline written" in err and "cannot connect" in err
    assert not list(cases.glob("*.baseline.json"))


def test_run_help_documents_exit_5(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "* 5 — runs could not run here: their data is not on this machine" in out and "--strict" in out


def test_a_malformed_offline_variable_is_one_usage_error_before_anything_runs(fresh, monkeypatch, capsys):
    monkeypatch.setenv(cifar10.OFFLINE_ENV, "yes please")
    cases = tiny_cases(Path("cases"), "tiny_a")
    assert main(["run", str(cases)]) == 2
    out, err = capsys.readouterr()
    assert "STABILITY_BENCH_OFFLINE='yes please': expected 1 or 0" in err
    assert "Traceback" not in out + err and "passed" not in out
