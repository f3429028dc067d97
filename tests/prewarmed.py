"""The tests' ``python -m …`` processes, forked from a pre-warmed interpreter.

pytester runs pytest in a subprocess here (conftest.py: in-process runs leak module state
between tests), and a few tests run ``python -m stability_bench.cli …`` or ``python -m
pytest …`` as a user types them. A fresh interpreter spends ~3 s before it runs anything:
torch (~1.3 s), pytest's plugins (~0.5 s) and, at the first optimizer step, torch._dynamo
(~1 s) — over forty such runs in the suite. The server in this file imports those modules
once (per pytest-xdist worker) and forks one child per run. A child is a new process whose
modules are its own: nothing one run does reaches the next or the test process, exactly as
with a fresh interpreter; it merely starts with these modules imported. It runs the module
(``runpy``, as ``-m`` does) with the arguments, folder, environment and ``sys.path`` that
``python -m MODULE`` would have. Only pytester's ``python -m pytest`` commands and
:func:`run_module` go this way (the signal tests start real interpreters: a process's own
start-up is what they check), and where the server cannot run (no ``os.fork``) a real
interpreter starts as before.

Run as a script, this file is the server: one JSON request per line on stdin; for each,
the child's pid and then its exit code (``Popen.returncode``'s convention) on stdout.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

#: imported once, before any fork. Not stability_bench (each run imports it afresh) nor
#: pytest's plugins (pytest would warn that it cannot rewrite their asserts).
WARM = ("torch", "torch._dynamo", "numpy", "yaml", "pytest")


# ---- the server -----------------------------------------------------------------------

def _serve() -> None:
    import gc
    import importlib

    startup = {sys.path[0], *os.environ.get("PYTHONPATH", "").split(os.pathsep)}
    base = [entry for entry in sys.path if entry not in startup]
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # Out of the collector's reach: each pytest session ends in five gc.collect() calls
    # (~0.8 s over torch's objects), which in a child would also copy every page they touch.
    gc.freeze()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, base)   # never returns
        _reply({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _reply({"returncode": os.waitstatus_to_exitcode(status)})


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child(request: dict, base: list[str]) -> None:
    """Become ``python -m MODULE ARGS`` run in ``cwd`` with ``env``; ends in ``SystemExit``,
    so the child shuts down as an interpreter does (atexit handlers, threads, buffers) and
    never returns into the server's loop."""
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        entries = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.getcwd(), *entries, *base]   # what `python -m` gives: the cwd first
        for fd, (path, flags) in enumerate([(os.devnull, os.O_RDONLY),
                                            (request["stdout"], os.O_WRONLY | os.O_APPEND),
                                            (request["stderr"], os.O_WRONLY | os.O_APPEND)]):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdin = open(os.devnull)
        import runpy

        sys.argv = [request["module"], *request["args"]]   # runpy puts the module's path first
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    raise SystemExit(code)


# ---- the client -------------------------------------------------------------------------

class Server:
    """One pre-warmed interpreter (started on first use) for this test process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def available(self) -> bool:
        return hasattr(os, "fork")

    def _started(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True)
        return self._proc

    def start(self, module: str, args: list[str], env: dict, stdout: str, stderr: str,
              cwd: str | None = None) -> "Child":
        """``python -m module *args`` in ``cwd`` (default: this one) with ``env``, its output
        appended to the files ``stdout`` and ``stderr``."""
        proc = self._started()
        request = {"module": module, "args": args, "cwd": cwd or os.getcwd(), "env": env, "stdout": stdout,
                   "stderr": stderr}
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        return Child(proc, json.loads(proc.stdout.readline())["pid"], args)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)


class Child:
    """The part of :class:`subprocess.Popen` that pytester's ``run`` uses."""

    stdin = None

    def __init__(self, server: subprocess.Popen, pid: int, args: list[str]):
        self._server, self.pid, self.args, self.returncode = server, pid, args, None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._server.stdout], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = json.loads(self._server.stdout.readline())["returncode"]
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, 9)


def prewarmed_popen(server: Server, original, close_stdin):
    """A replacement for ``Pytester.popen``: ``python -m pytest`` commands (their standard
    input closed: ``close_stdin``, pytester's default) run forked from ``server``, anything
    else through ``original``."""

    def popen(cmdargs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=close_stdin, **kw):
        cmdargs = [os.fspath(arg) for arg in cmdargs]
        files = [getattr(stream, "name", None) for stream in (stdout, stderr)]
        if not (server.available() and cmdargs[:2] == [sys.executable, "-mpytest"] and not kw
                and stdin is close_stdin and all(isinstance(f, str) for f in files)):
            return original(cmdargs, stdout=stdout, stderr=stderr, stdin=stdin, **kw)
        env = os.environ.copy()   # as Pytester.popen: the cwd on PYTHONPATH
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
        stdout.flush()
        stderr.flush()
        return server.start("pytest", cmdargs[2:], env, *files)

    return popen


SERVER = Server()   # one per test process: closed by conftest's session fixture, else it ends with this process (its stdin closes)


def run_module(args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-m", MODULE, *rest], cwd=cwd, env=env,
    capture_output=True, text=True, timeout=timeout)``, forked from :data:`SERVER`."""
    if args[0] != "-m" or not SERVER.available():
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        out.touch()
        err.touch()
        child = SERVER.start(args[1], args[2:], env, str(out), str(err), cwd=str(cwd))
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
        return subprocess.CompletedProcess([sys.executable, *args], code, out.read_text(), err.read_text())


if __name__ == "__main__":
    _serve()
