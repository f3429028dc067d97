"""Stop signals in the process itself: what the handler does wherever a signal lands (the
real command line, signalled from outside, is tested in tests/test_orchestrate.py)."""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import pytest

import stability_bench.signals as stop_signals_module
from stability_bench.signals import Interrupted, StopSignals, exit_code

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers are set in the main thread only")
NAMES = ("SIGINT", "SIGTERM", "SIGHUP")
DATA = Path(__file__).parent / "data"


@pytest.fixture
def stop_signals_not_ignored():
    """Each stop signal at its default for the test. A pytest started in the background of
    a non-interactive shell (``cmd &``, a CI step) inherits SIGINT ignored, and StopSignals
    keeps an ignored signal ignored (nohup's promise), so the signal would never arrive."""
    saved = {name: signal.getsignal(getattr(signal, name)) for name in NAMES}
    for name, handler in saved.items():
        if handler is signal.SIG_IGN:
            signal.signal(getattr(signal, name), signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL)
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_each_stop_signal_raises_interrupted_and_is_remembered(name, code, stop_signals_not_ignored):
    number = getattr(signal, name)
    with StopSignals() as signals:
        with pytest.raises(Interrupted) as info:
            signal.raise_signal(number)
            for _ in range(1000):  # the handler runs at the next bytecode
                pass
        assert info.value.signum == number and signals.signum == number
        assert isinstance(info.value, KeyboardInterrupt)  # handled wherever Ctrl-C is
    assert exit_code(number) == code


def test_a_held_signal_is_remembered_and_raised_by_check():
    with StopSignals() as signals:
        with signals.held():
            signal.raise_signal(signal.SIGTERM)
            total = sum(range(1000))  # not interrupted: a write in here is whole
        assert total == 499500 and signals.signum == signal.SIGTERM
        with pytest.raises(Interrupted):
            signals.check()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost exception, on purpose
def test_a_signal_lost_in_a_finaliser_is_raised_by_check():
    """Python discards an exception raised in ``__del__`` ("Exception ignored"): the handler's
    exception is lost there, the signal is not."""
    class Finaliser:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)
            sum(range(1000))

    with StopSignals() as signals:
        Finaliser()  # freed at once: __del__ runs here, and its exception is dropped
        sum(range(1000))
        assert signals.signum == signal.SIGTERM
        with pytest.raises(Interrupted):
            signals.check()


def test_handlers_are_restored_and_ignored_signals_stay_ignored():
    """A signal the process was started ignoring (nohup: SIGHUP) stays ignored."""
    before = {name: signal.getsignal(getattr(signal, name)) for name in NAMES}
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert {name: signal.getsignal(getattr(signal, name)) for name in NAMES} == before


def test_ignore_from_now_keeps_the_signals_ignored_after_the_block():
    """The process entry point's last word: once its exit code is decided a stop signal is
    ignored, through the interpreter's teardown (the block does not restore the handlers)."""
    before = {name: signal.getsignal(getattr(signal, name)) for name in NAMES}
    try:
        with StopSignals() as signals:
            signals.hold_from_now()
            signals.ignore_from_now()
        assert all(signal.getsignal(getattr(signal, name)) is signal.SIG_IGN for name in NAMES
                   if before[name] is not signal.SIG_IGN)
        signal.raise_signal(signal.SIGTERM)   # ignored: nothing happens, nothing is raised
        sum(range(1000))
    finally:
        for name, previous in before.items():
            signal.signal(getattr(signal, name), previous)


def _entry_frames(call) -> list:
    """The frame of every Python function ``call()`` enters, taken as it enters: where
    CPython (3.11+) runs the handler of a signal that arrived while C code was running (a
    deallocation, a system call) — at the first instruction of the next function called."""
    frames, previous = [], sys.gettrace()

    def tracer(frame, event, arg):
        if event == "call":
            frames.append(frame)

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)
    return frames


@pytest.mark.parametrize("begin", ["held", "hold_from_now"])
def test_a_signal_handled_as_a_hold_begins_is_remembered_not_raised(begin):
    """Handled in a frame that begins a hold, before the hold is taken, a raise would skip
    the write the hold is for, or escape ``cli.main`` between the command's end and its exit
    code: an uncaught ``Interrupted`` exits 1, which CI once saw for a signal sent as the
    command was exiting. So the handler, run in any function of this module entered while a
    hold begins, only remembers the signal."""
    with StopSignals() as signals:
        start = (lambda: signals.held().__enter__()) if begin == "held" else signals.hold_from_now
        entered = [f for f in _entry_frames(start) if f.f_code.co_filename == stop_signals_module.__file__]
    assert entered, "no function of the module was entered"
    for frame in entered:
        fresh = StopSignals()   # nothing held
        try:
            fresh._handle(signal.SIGINT, frame)   # the handler itself, as CPython would call it there
        except KeyboardInterrupt:   # not re-raised: pytest would end the whole session
            pytest.fail(f"raised in {frame.f_code.co_name}, as a hold began")
        assert fresh.signum == signal.SIGINT, frame.f_code.co_name


def test_elsewhere_the_handler_still_raises():
    """The exception above is by frame: the same handler, run in any other function, raises."""
    fresh = StopSignals()
    with pytest.raises(Interrupted):
        fresh._handle(signal.SIGINT, sys._getframe())
    with pytest.raises(Interrupted):
        fresh._handle(signal.SIGINT, None)


def test_a_signal_raised_as_the_exit_code_hold_begins_still_exits_128_plus_it(monkeypatch, tmp_path,
                                                                                stop_signals_not_ignored):
    """Pythons before 3.11 run a handler at any instruction, so the signal can raise in
    ``cli.main`` just before ``hold_from_now`` takes the hold. ``main`` returns 130 then,
    the results file whole, instead of letting the ``Interrupted`` escape (exit 1)."""
    from stability_bench import cli

    hold = StopSignals.hold_from_now
    calls = []

    def raised_as_it_begins(self):
        calls.append(self)
        if len(calls) == 1:
            self.signum = signal.SIGINT
            raise Interrupted(signal.SIGINT)
        hold(self)

    monkeypatch.setattr(StopSignals, "hold_from_now", raised_as_it_begins)
    out = tmp_path / "results.json"
    try:
        code = cli.main(["run", str(DATA / "orchestrate" / "sweep.yaml"), "--optimizer", "adam", "--no-critical-lr",
                         "--no-triage", "--json", str(out)])
    except KeyboardInterrupt as exc:   # not re-raised: pytest would end the whole session
        pytest.fail(f"the stop signal escaped cli.main: {exc!r}")
    assert code == 130 and calls
    assert len(json.loads(out.read_text())["runs"]) == 4
