"""Stop signals in the process itself: what the handler does wherever a signal lands (the
real command line, signalled from outside, is tested in tests/test_orchestrate.py)."""
from __future__ import annotations

import signal
import threading

import pytest

from stability_bench.signals import Interrupted, StopSignals, exit_code

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers are set in the main thread only")
NAMES = ("SIGINT", "SIGTERM", "SIGHUP")


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
