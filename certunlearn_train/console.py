"""Process entry of the ``certunlearn`` command: Ctrl-C handling from the first import to the exit.

This module imports only the standard library, so a Ctrl-C while the command's modules load
(torch, mpmath: most of the first second) is handled like one during the work: one line,
exit code 130, no traceback. Once the command has returned, SIGINT is ignored, so a Ctrl-C that
lands while the interpreter shuts down cannot turn a completed run into a death by signal.

:func:`forget_unhandled_interrupt` works around a CPython behaviour (3.8 to at least 3.13): a
KeyboardInterrupt raised inside ``exec``/``eval`` of a *string* (``dataclasses`` and
``collections.namedtuple`` build their methods that way, so torch's lazy imports run many)
marks the interpreter as "exiting by an unhandled KeyboardInterrupt", even when the caller
catches the exception. At exit the interpreter then kills itself with SIGINT, whatever exit code
the program chose. The next ``exec`` of a string that completes clears the mark.
"""
from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130


def forget_unhandled_interrupt() -> None:
    """Clear CPython's "unhandled KeyboardInterrupt" mark after the program handled one.

    Call it with SIGINT already ignored (or after the last possible interrupt), so that this
    ``exec`` itself cannot be interrupted and leave the mark set again.
    """
    exec("pass")  # noqa: S102 - a completed exec of a string resets the interpreter's mark


def stop_interrupts() -> None:
    """Ignore further Ctrl-C for the rest of the process and clear the interrupt mark."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forget_unhandled_interrupt()


def run(argv=None) -> None:
    """Run the command line and exit with its code (the ``certunlearn`` console script)."""
    armed = [True]

    def on_sigint(signum, frame):
        if armed[0]:
            raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    code = EXIT_INTERRUPTED
    try:
        try:
            from .cli import main
        except KeyboardInterrupt:
            armed[0] = False
            stop_interrupts()
            print("certunlearn: interrupted", file=sys.stderr)
        else:
            code = main(argv)
    except KeyboardInterrupt:  # landed between main's return and the next line
        pass
    armed[0] = False
    stop_interrupts()
    sys.exit(code)


if __name__ == "__main__":
    run()
