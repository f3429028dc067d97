"""Stop signals: SIGINT, SIGTERM and SIGHUP end an invocation the same way.

A CI timeout and ``docker stop`` send SIGTERM, a closed terminal SIGHUP, Ctrl-C SIGINT;
each must leave the results that finished. :class:`StopSignals` makes all three raise
:class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, as Python does for
SIGINT alone, and the command line ends with ``128 + signal number`` (130 for SIGINT,
143 for SIGTERM, 129 for SIGHUP: what a shell reports for a process the signal ended).

Where a signal can land, and what the handler does about it:

* anywhere in ordinary code (training a run, between runs, loading): :class:`Interrupted`
  unwinds to the command, whose ``finally`` writes the results file;
* in code where Python discards exceptions (a ``__del__``, a weakref callback, a generator
  being closed: "Exception ignored in ..."): the exception is lost, but the signal is
  remembered and :meth:`StopSignals.check` — called after every finished run — raises it;
* inside :meth:`StopSignals.held` (a journal line being written, the results file being
  compacted): only remembered, so the file is never left half-written, and checked after;
* as a hold *begins*: CPython (3.11+) runs a pending handler at the first instruction of
  the next Python function called, so a signal that arrived while C code ran (freeing a
  finished command's objects, say) is handled in the frame of :meth:`~StopSignals.held`,
  its ``__enter__`` or :meth:`~StopSignals.hold_from_now` *before* the hold is taken.
  Raised there, it skipped the write the hold was for, or escaped ``cli.main`` between the
  command's end and its exit code (an uncaught :class:`Interrupted` exits 1: seen in CI).
  The handler knows those frames by their code and only remembers the signal there;
  ``cli.main`` also catches what is raised as its hold begins (Pythons before 3.11 run
  handlers at any instruction, so there the handler may run just before the call);
* once the command has decided its exit code (:meth:`StopSignals.hold_from_now`): a signal
  before that decision still makes it 128 + the signal; after it, in the interpreter's
  teardown, the process entry point ignores it (:meth:`StopSignals.ignore_from_now`), so the
  exit code is the one decided, never a death by the signal;
* before ``cli.main`` installs the handler — the interpreter starting and importing
  ``stability_bench.cli``, the first ~0.1 s — no code of ours runs yet: Python's own
  default applies (SIGINT: a ``KeyboardInterrupt`` traceback, exit 1 when it lands in
  ``python -m``'s import of the module, else death by SIGINT).

A signal the process was *started* ignoring stays ignored — ``nohup`` ignores SIGHUP, a
background job of a non-interactive shell ignores SIGINT — exactly as Python leaves an
ignored SIGINT alone. (Such a job cannot be stopped with that signal; send SIGTERM.)
"""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")   # SIGHUP does not exist on Windows: skipped there


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_code(signum: int) -> int:
    """``128 + signum``: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Install the stop-signal handler for the ``with`` block (main thread only; elsewhere,
    and for signals the process was started ignoring, the dispositions stay as they are).
    ``signum`` is the first stop signal that arrived, None if none did."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._holding = 0
        self._hold = _Hold(self)
        self._saved: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self   # only the main thread may set handlers; a caller in a thread keeps Python's
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is None or signal.getsignal(number) is signal.SIG_IGN:
                continue
            self._saved[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, previous in self._saved.items():
            signal.signal(number, previous)
        self._saved.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        if self._holding or (frame is not None and frame.f_code in _HOLD_ENTRIES):
            return   # held, or a hold beginning (module docstring): remembered only
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal arrived (one whose exception was
        lost where it landed, or held)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def held(self) -> "_Hold":
        """A context manager inside which a stop signal is remembered, not raised (a write
        that must be whole). Reentrant."""
        return self._hold

    def hold_from_now(self) -> None:
        """From here to the end of the ``with`` block signals are only remembered (the
        command has ended; its exit code is being decided)."""
        self._holding += 1

    def ignore_from_now(self) -> None:
        """Ignore the stop signals for the rest of the process (the ``with`` block does not
        restore them). For a process whose exit code is decided: while the interpreter shuts
        down Python resets every handler it set to the default, so a signal landing in that
        teardown (a second or so after torch) would kill the process — exit ``-2`` rather
        than the code decided, the results file long complete. An ignored signal stays
        ignored through the teardown."""
        for number in self._saved:
            signal.signal(number, signal.SIG_IGN)
        self._saved.clear()


class _Hold:
    """What :meth:`StopSignals.held` returns: a class, not a generator, so that the handler
    can tell the frames that begin a hold by their code (:data:`_HOLD_ENTRIES`)."""

    __slots__ = ("signals",)

    def __init__(self, signals: StopSignals) -> None:
        self.signals = signals

    def __enter__(self) -> None:
        self.signals._holding += 1

    def __exit__(self, *exc) -> None:
        self.signals._holding -= 1


# The functions that begin a hold: a handler run at their first instruction only remembers.
_HOLD_ENTRIES = frozenset({StopSignals.held.__code__, StopSignals.hold_from_now.__code__, _Hold.__enter__.__code__})


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (before a process pool does) with SIGHUP
    blocked. The tracker ignores SIGINT and SIGTERM but not SIGHUP, so a closed terminal or
    ``timeout -s HUP`` (the signal sent to the whole process group) killed it, and its
    relaunch printed a ``KeyError`` traceback for every semaphore it had not seen. A blocked
    signal stays blocked across fork and exec; the parent's own SIGHUP waits while blocked
    and arrives on unblocking, so none is lost. Already running, it is left as it is."""
    if not hasattr(signal, "pthread_sigmask") or not hasattr(signal, "SIGHUP"):
        return   # Windows: no SIGHUP, no resource tracker
    from multiprocessing import resource_tracker

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_terminal_signals() -> None:
    """Part of a worker process's initializer (``execute._start_worker``). A terminal
    sends SIGINT (Ctrl-C) and SIGHUP to the whole process group, workers included; the
    parent decides what follows (it stops its workers with SIGTERM), so a worker neither
    dies by SIGHUP nor prints a ``KeyboardInterrupt`` traceback of its own while it waits
    for work."""
    for name in ("SIGINT", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)
