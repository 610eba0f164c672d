"""Ctrl-C for the whole life of a command: one line and exit code 130, never a death by signal.

Standard library only, so that :mod:`certunlearn_train.console` can install the handling before
the command's modules (torch, mpmath: most of the first second) load.

:func:`forget_unhandled_interrupt` works around a CPython behaviour (3.8 to at least 3.13): a
KeyboardInterrupt raised inside ``exec``/``eval`` of a *string* (``dataclasses`` and
``collections.namedtuple`` build their methods that way, so torch's lazy imports run many)
marks the interpreter as "exiting by an unhandled KeyboardInterrupt", even when the caller
catches the exception. At exit the interpreter then kills itself with SIGINT, whatever exit code
the program chose (seen under ``python -m``, as torchrun starts ranks). The next ``exec`` of a
string that completes clears the mark.
"""
from __future__ import annotations

import _thread
import signal
import sys
from typing import Callable, Optional, Sequence

__all__ = ["EXIT_INTERRUPTED", "forget_unhandled_interrupt", "stop_interrupts", "run_command"]

EXIT_INTERRUPTED = 130


def forget_unhandled_interrupt() -> None:
    """Clear CPython's "unhandled KeyboardInterrupt" mark after the program handled one.

    Call it with SIGINT already ignored (or after the last possible interrupt), so that this
    ``exec`` itself cannot be interrupted and leave the mark set again.
    """
    exec("pass")  # a completed exec of a string resets the interpreter's mark


def stop_interrupts() -> None:
    """Ignore further Ctrl-C for the rest of the process and clear the interrupt mark."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forget_unhandled_interrupt()


def run_command(load_main: Callable[[], Callable[[Optional[Sequence[str]]], int]],
                argv: Optional[Sequence[str]] = None, prog: str = "certunlearn") -> None:
    """Load the command (``load_main()`` imports and returns ``main``), run it, exit.

    A Ctrl-C while the command loads prints ``PROG: interrupted`` and exits 130; ``main`` handles
    the ones during the work; once it has returned, SIGINT is ignored, so an interrupt that lands
    while the interpreter shuts down cannot turn a completed run into a death by signal. An
    interrupt that Python would drop (raised inside a weakref callback or a ``__del__``) is
    delivered again. Where SIGINT was ignored when the process started (a background job of a
    shell), it stays ignored.
    """
    armed = [True]

    def on_sigint(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    previous_hook = sys.unraisablehook

    def on_unraisable(unraisable):
        # Python drops an exception raised where none can propagate (a weakref callback of the
        # import system, a __del__) with "Exception ignored in ...": an interrupt that lands
        # there would be lost and the command would run to its end. Deliver it again, to land
        # in the command's own code.
        if armed[0] and isinstance(unraisable.exc_value, KeyboardInterrupt):
            # from another thread, so that the handler runs once this hook has returned (called
            # here, it would run inside the hook and be dropped again)
            _thread.start_new_thread(_thread.interrupt_main, (signal.SIGINT,))
            return
        previous_hook(unraisable)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
        sys.unraisablehook = on_unraisable
    code = EXIT_INTERRUPTED
    try:
        try:
            main = load_main()
        except KeyboardInterrupt:
            armed[0] = False
            stop_interrupts()
            print(f"{prog}: interrupted", file=sys.stderr)
        else:
            code = main(argv)
    except KeyboardInterrupt:  # landed between main's return and the next line
        pass
    armed[0] = False
    stop_interrupts()
    sys.unraisablehook = previous_hook
    sys.exit(code)
