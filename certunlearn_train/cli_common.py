"""What every subcommand of ``certunlearn`` shares: exit codes, errors, argument types, output
paths checked before any work and written together, progress and thread options."""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import List

from .checks import int_problem, real_problem

__all__ = ["CLASS", "DATA_CHOICES", "EPILOG", "EPOCHS", "EXIT_CODES", "EXIT_FAILED",
           "EXIT_INTERRUPTED", "EXIT_NOT_VERIFIABLE", "EXIT_OK", "EXIT_USAGE", "FRACTION",
           "FileProblem", "MAX_EPOCHS", "MAX_SEED", "MAX_THREADS", "MAX_WIDTH", "OutputFolder",
           "POS_FLOAT", "POS_INT", "Parser", "SEED", "THREADS", "UsageError", "WIDTH",
           "check_model_kind", "check_output_file", "check_results", "float_type", "fmt_guarantee",
           "forget_split", "int_type", "load_data", "no_progress_arg", "one_line",
           "probe_writable", "same_file", "set_threads", "show_progress", "threads_arg"]


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_VERIFIABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {
    EXIT_OK: "success (verify: the guarantee was recomputed and the model matches)",
    EXIT_FAILED: "failure: verification failed, or a file is missing, unreadable or not of "
                 "the expected kind",
    EXIT_USAGE: "usage error: a bad argument, config key or value, or parameters the "
                "accountant refuses",
    EXIT_NOT_VERIFIABLE: "verify only: nothing failed, but the guarantee cannot be checked "
                         "from a certificate (exact retraining)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class UsageError(Exception):
    """Bad command line: one line, exit code 2."""


class FileProblem(Exception):
    """A file or folder cannot be used: one line, exit code 1."""


class Parser(argparse.ArgumentParser):
    """``argparse`` that reports a bad command line as one line (``UsageError``), not usage text."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------
# Argument types: each refuses with the constraint and the value
# ---------------------------------------------------------------------------------------------

def int_type(low, high):
    def parse(text):
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = text  # refused below as not an integer
        problem = int_problem(value, low=low, high=high, allow_float=False)
        if problem:
            raise argparse.ArgumentTypeError(f"must be {problem}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def float_type(low=None, high=None, low_open=True, high_open=False):
    def parse(text):
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        problem = real_problem(value, low=low, high=high, low_open=low_open,
                               high_open=high_open, noun="a finite number",
                               fmt=lambda b: f"{b:g}")
        if problem:
            raise argparse.ArgumentTypeError(f"must be {problem}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


#: Upper limits: a seed torch accepts (with room for seed + 1), a thread count and a layer width
#: that cannot exhaust the machine, an epoch count that ends.
MAX_SEED, MAX_THREADS, MAX_WIDTH, MAX_EPOCHS = (1 << 62) - 1, 256, 1 << 16, 1e6
POS_INT = int_type(1, 1 << 40)
SEED = int_type(0, MAX_SEED)
CLASS = int_type(0, 1 << 20)
THREADS = int_type(1, MAX_THREADS)
WIDTH = int_type(1, MAX_WIDTH)
POS_FLOAT = float_type(0.0)
EPOCHS = float_type(0.0, MAX_EPOCHS)
FRACTION = float_type(0.0, 1.0, high_open=True)
#: Data set names (certunlearn_train.data.DATASETS, spelled out to keep numpy out of the import).
DATA_CHOICES = ("digits", "mnist5k", "mnist", "cifar10")


# ---------------------------------------------------------------------------------------------
# Output paths: checked before any work; a folder this run created is removed if the run fails
# ---------------------------------------------------------------------------------------------

def probe_writable(folder: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".certunlearn-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FileProblem(f"cannot write into folder {folder!r}: {exc.strerror or exc}") \
            from None


def check_output_file(path: str, option: str) -> None:
    """A file to be written: not a directory, in an existing writable folder."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is an existing directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileProblem(f"{option} {path!r}: folder {parent!r} does not exist")
    probe_writable(parent)


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (or would: the same absolute real path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_results(paths: List[str], inputs: List[str], overwrite: bool) -> None:
    """Result files about to be written: none is a folder, none is a file this run reads, and
    none exists already unless ``overwrite``."""
    for path in paths:
        for source in inputs:
            if source and same_file(path, source):
                raise UsageError(f"{path!r} is also an input of this run ({source!r}); write "
                                 "the result elsewhere (--overwrite never replaces an input)")
        if os.path.isdir(path):
            raise UsageError(f"{path!r} is an existing directory; the run writes a file there")
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise UsageError(f"{' and '.join(map(repr, existing))} already "
                         f"{'exists' if len(existing) == 1 else 'exist'}: give --overwrite to "
                         "replace, or another output path")


class OutputFolder:
    """Create (or reuse) an output folder before the work; remove what was created if the run
    fails or is interrupted and left the folder empty."""

    def __init__(self, path: str):
        self.path = path
        self.created: List[str] = []

    def __enter__(self):
        path = os.path.abspath(self.path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise FileProblem(f"output {self.path!r} exists and is not a folder")
        missing, p = [], path
        while not os.path.exists(p):
            missing.append(p)
            p = os.path.dirname(p)
        try:
            for q in reversed(missing):
                os.mkdir(q)
                self.created.append(q)
            probe_writable(path)
        except OSError as exc:
            self._clean()
            raise FileProblem(f"cannot create output folder {self.path!r}: "
                              f"{exc.strerror or exc}") from None
        except FileProblem:
            self._clean()
            raise
        return self

    def _clean(self):
        for q in reversed(self.created):
            try:
                os.rmdir(q)  # only if empty
            except OSError:
                break
        self.created = []

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._clean()
        return False


def show_progress(args) -> bool:
    """Progress bars only on a terminal: a log file or a pipe gets no carriage-return lines."""
    if getattr(args, "no_progress", False):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def no_progress_arg(p) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (they are shown only when stderr is a terminal)")


def set_threads(n):
    if n is not None:
        import torch
        torch.set_num_threads(int(n))


def threads_arg(p, default=None):
    p.add_argument("--threads", type=THREADS, default=default,
                   help="torch intra-op threads (tiny models run fastest on 1)"
                        + ("" if default is None else f"; default {default}"))


def fmt_guarantee(eps, delta) -> str:
    from certunlearn_theory import format_up
    return f"({format_up(eps, reads_back=True)}, {format_up(delta, reads_back=True)})"


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------

def load_data(name, root, test_fraction, split_seed):
    from .data import load_dataset
    return load_dataset(name, root, test_fraction=test_fraction, split_seed=split_seed)


def forget_split(train_set, fraction, classes, seed, indices_file=None):
    from .data import load_forget_indices, select_forget, split_forget
    if indices_file is not None:
        idx = load_forget_indices(indices_file, len(train_set))
    else:
        idx = select_forget(train_set.y, fraction=fraction, classes=classes, seed=seed)
    return split_forget(train_set, idx)


def check_model_kind(model, path) -> None:
    """A model no run can unlearn (BatchNorm, ...) is a file of the wrong kind: exit code 1,
    like any other unusable model file."""
    from .models import check_unlearnable
    try:
        check_unlearnable(model)
    except ValueError as exc:
        raise FileProblem(f"{path}: {exc}") from None


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


