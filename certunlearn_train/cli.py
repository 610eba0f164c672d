"""The ``certunlearn`` console script: accountant subcommands plus the training subcommands.

Accountant subcommands import no torch; training subcommands (demo, train, unlearn, evaluate,
verify, keygen) import it inside their handlers, when they run.

Every failure is one line on stderr and a documented exit code (:data:`EXIT_CODES`), never a
traceback: 0 success; 1 failure (verification failed, a file missing, unreadable or not of the
expected kind); 2 usage error (a bad argument, config key or value, or parameters the accountant
refuses); 3 ``verify`` only: nothing failed, but the guarantee cannot be checked from the
certificate (``retrain``); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import List, Optional

from certunlearn_theory import cli as theory_cli

from . import plan_cli
from .checks import int_problem, real_problem
from .experiments import cli as experiments_cli
from .interrupts import run_command, stop_interrupts

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
_EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class UsageError(Exception):
    """Bad command line: one line, exit code 2."""


class FileProblem(Exception):
    """A file or folder cannot be used: one line, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` that reports a bad command line as one line (``UsageError``), not usage text."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------
# Argument types: each refuses with the constraint and the value
# ---------------------------------------------------------------------------------------------

def _int_type(low, high):
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


def _float_type(low=None, high=None, low_open=True, high_open=False):
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
_POS_INT = _int_type(1, 1 << 40)
_SEED = _int_type(0, MAX_SEED)
_CLASS = _int_type(0, 1 << 20)
_THREADS = _int_type(1, MAX_THREADS)
_WIDTH = _int_type(1, MAX_WIDTH)
_POS_FLOAT = _float_type(0.0)
_EPOCHS = _float_type(0.0, MAX_EPOCHS)
_FRACTION = _float_type(0.0, 1.0, high_open=True)
#: Data set names (certunlearn_train.data.DATASETS, spelled out to keep numpy out of the import).
DATA_CHOICES = ("digits", "mnist5k", "mnist", "cifar10")


# ---------------------------------------------------------------------------------------------
# Output paths: checked before any work; a folder this run created is removed if the run fails
# ---------------------------------------------------------------------------------------------

def _probe_writable(folder: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".certunlearn-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FileProblem(f"cannot write into folder {folder!r}: {exc.strerror or exc}") \
            from None


def _check_output_file(path: str, option: str) -> None:
    """A file to be written: not a directory, in an existing writable folder."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is an existing directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileProblem(f"{option} {path!r}: folder {parent!r} does not exist")
    _probe_writable(parent)


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (or would: the same absolute real path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _check_results(paths: List[str], inputs: List[str], overwrite: bool) -> None:
    """Result files about to be written: none is a folder, none is a file this run reads, and
    none exists already unless ``overwrite``."""
    for path in paths:
        for source in inputs:
            if source and _same_file(path, source):
                raise UsageError(f"{path!r} is also an input of this run ({source!r}); write "
                                 "the result elsewhere (--overwrite never replaces an input)")
        if os.path.isdir(path):
            raise UsageError(f"{path!r} is an existing directory; the run writes a file there")
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise UsageError(f"{' and '.join(map(repr, existing))} already "
                         f"{'exists' if len(existing) == 1 else 'exist'}: give --overwrite to "
                         "replace, or another output path")


def _write_together(files: List[tuple]) -> None:
    """Write ``[(path, bytes), ...]`` so that either every file is new or none changed.

    Each file is first written in full to a temporary file next to it; then the temporary files
    are renamed over their targets, and if one rename fails the targets already replaced get
    their previous content back (hard links kept until the end).
    """
    temps, done = [], []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                       prefix=".tmp-", suffix=os.path.basename(path))
            temps.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for (path, _), tmp in zip(files, temps):
            old = None
            if os.path.lexists(path):
                old = tmp + ".old"
                os.link(path, old)
            done.append((path, old))
            os.replace(tmp, path)
    except BaseException:
        for path, old in reversed(done):
            try:
                if old is not None:
                    os.replace(old, path)
                elif os.path.lexists(path):
                    os.unlink(path)
            except OSError:
                pass
        raise
    finally:
        for tmp in temps:
            for leftover in (tmp, tmp + ".old"):
                if os.path.lexists(leftover):
                    os.unlink(leftover)


class _OutputFolder:
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
            _probe_writable(path)
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


def _progress(args) -> bool:
    """Progress bars only on a terminal: a log file or a pipe gets no carriage-return lines."""
    if getattr(args, "no_progress", False):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _no_progress_arg(p) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress bars (they are shown only when stderr is a terminal)")


def _set_threads(n):
    if n is not None:
        import torch
        torch.set_num_threads(int(n))


def _threads_arg(p, default=None):
    p.add_argument("--threads", type=_THREADS, default=default,
                   help="torch intra-op threads (tiny models run fastest on 1)"
                        + ("" if default is None else f"; default {default}"))


def _fmt_guarantee(eps, delta) -> str:
    from certunlearn_theory import format_up
    return f"({format_up(eps, reads_back=True)}, {format_up(delta, reads_back=True)})"


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------

def _demo(args) -> int:
    from .demo import fresh_run_dir_name, run_demo
    if args.out is not None and not args.out.strip():
        raise UsageError("--out must name a folder, got an empty string (leave --out out for a "
                         "fresh folder under runs/)")
    out = args.out or fresh_run_dir_name("demo")
    _check_results([os.path.join(out, "model.pt"), os.path.join(out, "certificate.json")], [],
                   args.overwrite)
    with _OutputFolder(out):
        _set_threads(args.threads)
        result = run_demo(out, quick=args.quick, seed=args.seed, progress=_progress(args),
                          data=args.data)
    print(f"output folder: {result['out']}")
    return 0


def _load_data(name, root, test_fraction, split_seed):
    from .data import load_dataset
    return load_dataset(name, root, test_fraction=test_fraction, split_seed=split_seed)


def _forget_split(train_set, fraction, classes, seed, indices_file=None):
    from .data import load_forget_indices, select_forget, split_forget
    if indices_file is not None:
        idx = load_forget_indices(indices_file, len(train_set))
    else:
        idx = select_forget(train_set.y, fraction=fraction, classes=classes, seed=seed)
    return split_forget(train_set, idx)


def _train(args) -> int:
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is an existing directory; give a file path")
    _check_results([args.out], [], args.overwrite)
    with _OutputFolder(os.path.dirname(os.path.abspath(args.out))):  # runs/ made if missing
        _check_output_file(args.out, "--out")
        return _train_work(args)


def _train_work(args) -> int:
    _set_threads(args.threads)
    import torch

    from .evaluate import evaluate_model
    from .model_files import model_arch, model_file_bytes
    from .models import build_model
    from .train import train
    train_set, test_set = _load_data(args.data, args.data_root, args.test_fraction,
                                     args.split_seed)
    kwargs = {"hidden": tuple(args.hidden)} if args.model == "mlp" else {}
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = build_model(args.model, train_set.x.shape[1:], train_set.num_classes, **kwargs)
    train(model, train_set.tensors(), epochs=args.epochs, lr=args.lr,
          batch_size=args.batch_size, seed=args.seed, progress=_progress(args))
    data_info = {"name": args.data, "root": args.data_root, "test_fraction": args.test_fraction,
                 "split_seed": args.split_seed}
    _write_together([(args.out, model_file_bytes(model, model_arch(
        args.model, train_set.x.shape[1:], train_set.num_classes, data_info, **kwargs)))])
    r = evaluate_model(model, retain=train_set.tensors(), test=test_set.tensors())
    print(f"trained {args.model} on {len(train_set)} {args.data} images: train acc "
          f"{r['retain_acc']:.3f}, test acc {r['test_acc']:.3f}; wrote {args.out}")
    return 0


def _unlearn(args) -> int:
    import contextlib

    from . import distributed
    from .config import load_config
    cfg = load_config(args.config)
    if args.sign_key is not None:
        cfg["sign_key"] = args.sign_key
    if args.model_factory is not None:
        cfg["model_factory"] = args.model_factory
    writer = distributed.is_writer()  # data parallel: only rank 0 signs and writes files
    if writer:  # before any work: never an input, never an earlier result unless --overwrite
        _check_results([os.path.join(cfg["out"], "model.pt"),
                        os.path.join(cfg["out"], "certificate.json")],
                       [cfg["model_file"], cfg["forget_indices_file"], cfg["sign_key"],
                        args.config], args.overwrite)
    if cfg["method"] in ("gradient_clipping", "model_clipping"):
        from .unlearn import check_settings  # every scalar, before the model and data load
        check_settings(**_unlearn_settings(cfg))
    sign_key = None
    if cfg["sign_key"] is not None and writer:  # a bad key fails before the work, not after
        from .signing import load_private_key
        sign_key = load_private_key(cfg["sign_key"])
    from .model_files import load_model
    model, arch = load_model(cfg["model_file"], cfg["model_factory"])
    _check_model_kind(model, cfg["model_file"])
    with _OutputFolder(cfg["out"]) if writer else contextlib.nullcontext():
        _set_threads(cfg["threads"])
        return _unlearn_work(cfg, model, arch, sign_key, progress=_progress(args))


def _check_model_kind(model, path) -> None:
    """A model no run can unlearn (BatchNorm, ...) is a file of the wrong kind: exit code 1,
    like any other unusable model file."""
    from .models import check_unlearnable
    try:
        check_unlearnable(model)
    except ValueError as exc:
        raise FileProblem(f"{path}: {exc}") from None


def _unlearn_settings(cfg) -> dict:
    """The keyword arguments of ``unlearn()`` that a config sets (not the data or the seed)."""
    return dict(eps=cfg["eps"], delta=cfg["delta"], method=cfg["method"], steps=cfg["steps"],
                epochs=cfg["epochs"], C0=cfg["C0"],
                C1=cfg["C1"] if cfg["C1"] is not None else float("inf"), lr=cfg["lr"],
                lam=cfg["lam"], C2=cfg["C2"], sigma0=cfg["sigma0"],
                batch_size=cfg["batch_size"], clip=cfg["clip"],
                finetune_epochs=cfg["finetune_epochs"], finetune_lr=cfg["finetune_lr"])


def _unlearn_work(cfg, model, arch, sign_key, progress) -> int:
    from . import distributed
    from .baselines import output_perturbation, retrain
    from .evaluate import evaluate_model
    from .model_files import model_file_bytes
    from .unlearn import unlearn
    train_set, test_set = _load_data(cfg["data"], cfg["data_root"], cfg["test_fraction"],
                                     cfg["split_seed"])
    retain_set, forget_set = _forget_split(train_set, cfg["forget_fraction"],
                                           cfg["forget_classes"], cfg["forget_seed"],
                                           cfg["forget_indices_file"])
    retain = retain_set.tensors()
    common = dict(forget_size=len(forget_set), seed=cfg["seed"],
                  progress=progress and distributed.is_writer(), device=distributed.device())
    method = cfg["method"]
    if method == "retrain":
        out_model, cert = retrain(model, retain, epochs=cfg["retrain_epochs"], lr=cfg["lr"],
                                  batch_size=cfg["batch_size"], **common)
    elif method == "output_perturbation":
        out_model, cert = output_perturbation(
            model, retain, eps=cfg["eps"], delta=cfg["delta"], C0=cfg["C0"],
            finetune_epochs=cfg["finetune_epochs"], finetune_lr=cfg["finetune_lr"] or cfg["lr"],
            batch_size=cfg["batch_size"], **common)
    else:
        out_model, cert = unlearn(model, retain, **_unlearn_settings(cfg), **common)
    if not distributed.is_writer():  # data parallel: rank 0 writes the files and reports
        return 0
    if sign_key is not None:
        cert = cert.sign(sign_key)
    model_path = os.path.join(cfg["out"], "model.pt")
    cert_path = os.path.join(cfg["out"], "certificate.json")
    data_info = {"name": cfg["data"], "root": cfg["data_root"],
                 "test_fraction": cfg["test_fraction"], "split_seed": cfg["split_seed"]}
    arch = dict(arch, data=dict(
        arch.get("data") or {}, **data_info, forget_fraction=cfg["forget_fraction"],
        forget_classes=cfg["forget_classes"], forget_seed=cfg["forget_seed"],
        forget_indices_file=None if cfg["forget_indices_file"] is None
        else os.path.abspath(cfg["forget_indices_file"])))
    # both files or neither: a failure while writing leaves an earlier result as it was
    _write_together([(model_path, model_file_bytes(out_model, arch)),
                     (cert_path, (cert.to_json() + "\n").encode())])
    r = evaluate_model(out_model, retain=retain, forget=forget_set.tensors(),
                       test=test_set.tensors())
    print(f"{cert.method}: {_fmt_guarantee(cert.eps, cert.delta)}-unlearning of "
          f"{len(forget_set)} points; test acc {r['test_acc']:.3f}, retain acc "
          f"{r['retain_acc']:.3f}, forget acc {r['forget_acc']:.3f}, MIA AUC {r['mia_auc']:.3f}")
    print(f"wrote {cert_path} and {model_path}" + (" (signed)" if sign_key is not None else ""))
    return 0


def _unlearn_in_process_group(args) -> int:
    """Under torchrun (WORLD_SIZE > 1) run ``_unlearn`` data parallel in a process group."""
    from . import distributed
    started = distributed.init_from_env(args.dist_timeout)
    try:
        return _unlearn(args)
    finally:
        distributed.shutdown(started)


def _evaluate(args) -> int:
    _set_threads(args.threads)
    from .evaluate import evaluate_model
    from .model_files import load_model
    model, arch = load_model(args.model, args.model_factory)
    data = dict(arch.get("data") or {})
    name = args.data or data.get("name", "digits")
    root = args.data_root or data.get("root")
    train_set, test_set = _load_data(name, root, data.get("test_fraction", 0.2),
                                     data.get("split_seed", 0))
    fraction, classes, indices_file = args.forget_fraction, args.forget_classes, None
    if fraction is None and classes is None:
        fraction, classes = data.get("forget_fraction"), data.get("forget_classes")
        indices_file = data.get("forget_indices_file")
    if fraction is None and classes is None and indices_file is None:
        r = evaluate_model(model, retain=train_set.tensors(), test=test_set.tensors())
        print(f"train acc {r['retain_acc']:.4f}  test acc {r['test_acc']:.4f}")
        return 0
    retain_set, forget_set = _forget_split(train_set, fraction, classes,
                                           args.forget_seed if args.forget_seed is not None
                                           else data.get("forget_seed", 0), indices_file)
    r = evaluate_model(model, retain=retain_set.tensors(), forget=forget_set.tensors(),
                       test=test_set.tensors())
    print(f"test acc {r['test_acc']:.4f}  retain acc {r['retain_acc']:.4f}  forget acc "
          f"{r['forget_acc']:.4f}  MIA AUC {r['mia_auc']:.4f}")
    return 0


def _sniff(path: str) -> str:
    """'model', 'json' or 'other' from the first bytes of a file ('' if unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return ""
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "model"
    return "json" if head.lstrip()[:1] == b"{" else "other"


def _model_to_verify(path: str, factory: Optional[str]):
    """The model file as a module when that needs no user code (a bundled architecture) or the
    user named a factory; otherwise its weights alone (the parameter count is then unchecked)."""
    from .model_files import ModelFileError, load_model, load_model_file, model_from_arch
    state, arch = load_model_file(path)
    if factory:
        return load_model(path, factory)[0]
    if arch.get("name") and not arch.get("factory"):
        try:
            return model_from_arch(arch, state)
        except ModelFileError:
            return state  # the weights' hash is still checked; the count is listed as unchecked
    return state


def _verify(args) -> int:
    from .certificates import (
        CertificateError,
        NotVerifiableError,
        RunCertificate,
        chain_links_authenticated,
        verify_chain,
    )
    from .model_files import ModelFileError
    files = args.files
    if not args.chain and len(files) != 2:
        raise UsageError(f"give CERT MODEL (or --chain CERT... MODEL), "
                         f"got {len(files)} path(s)")
    if len(files) < 2:
        raise UsageError("--chain needs at least one certificate and "
                         "the final model")
    cert_paths, model_path = files[:-1], files[-1]
    if _sniff(cert_paths[0]) == "model" and _sniff(model_path) == "json":
        raise UsageError("the arguments look swapped: the first is a "
                         "model file and the last a JSON file (usage: certunlearn verify CERT "
                         "MODEL)")
    try:
        certs = [RunCertificate.load(p) for p in cert_paths]
        model = _model_to_verify(model_path, getattr(args, "model_factory", None))
        try:
            if args.chain:
                reports = verify_chain(certs, model, public_key=args.public_key)
            else:
                reports = [certs[0].verify(model, public_key=args.public_key)]
        except NotVerifiableError as exc:
            reports = exc.reports
    except (CertificateError, ModelFileError) as exc:
        print(f"certunlearn verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for k, r in enumerate(reports, 1):  # what must be read before the guarantee, first
        for text in r.warnings:
            where = f"certificate {k}: " if args.chain else ""
            print(f"certunlearn verify: WARNING: {where}{text}", file=sys.stderr)
    sha = certs[-1].model_sha256_after[:16]
    if args.chain:
        for k, (c, r) in enumerate(zip(certs, reports), 1):
            what = "recomputed by the accountant" if r.guarantee_recomputed else \
                "NOT VERIFIABLE (exact retraining cannot be checked from a certificate)"
            print(f"certificate {k}: {c.method}, {_fmt_guarantee(c.eps, c.delta)}-unlearning "
                  f"{what}; signature: {r.signature}")
        links = ("the links are covered by the certificates' signatures"
                 if chain_links_authenticated(certs) else
                 "the links are unauthenticated (unsigned certificates: a starting hash can be "
                 "edited to connect two runs; sign the requests to bind them)")
        print(f"chain: {len(certs)} certificates, each starting from the previous one's output; "
              f"{links}; the final model matches (SHA-256 {sha}...). Each request is certified "
              f"on its own against retraining without all forget sets so far (no "
              f"composition).")
    else:
        c, r = certs[0], reports[0]
        if r.guarantee_recomputed:
            print(f"certunlearn verify: OK: {c.method}, {_fmt_guarantee(c.eps, c.delta)}-"
                  f"unlearning recomputed by the accountant from the certificate's parameters; "
                  f"model weights match (SHA-256 {sha}...)")
        else:
            print(f"certunlearn verify: NOT VERIFIABLE: {c.method} claims exact unlearning; "
                  f"exact retraining cannot be checked from a certificate (only the model "
                  f"hash was: the weights match, SHA-256 {sha}...)")
        print(f"  signature: {r.signature}")
        for field, why in r.not_checked:
            print(f"  not checked: {field}: {why}")
    if any(c.noise_seed_user_supplied for c in certs):
        print("warning: a run used a caller-chosen noise seed: it is a reproduction, not a "
              "private release", file=sys.stderr)
    if not all(r.guarantee_recomputed for r in reports):
        return EXIT_NOT_VERIFIABLE
    return EXIT_OK


def _keygen(args) -> int:
    from .signing import generate_key_files
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is an existing directory; give a file path")
    with _OutputFolder(os.path.dirname(os.path.abspath(args.out))):  # keys/ made if missing
        _check_output_file(args.out, "--out")
        fp = generate_key_files(args.out)
    print(f"wrote private key {args.out} (mode 0600; keep it secret) and public key "
          f"{args.out}.pub (fingerprint {fp})")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

def _register_training(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "demo", help="train on digits, forget 10%% with a certificate, compare with retraining",
        description="Train an MLP on scikit-learn's digits, unlearn a random 10% of the "
                    "training set by gradient clipping at (eps, delta) = (1, 1e-5), fine-tune, "
                    "and compare with retraining from scratch. Writes certificate.json and "
                    "model.pt.", epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("--out", help="output folder (default: a fresh folder under runs/)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.add_argument("--data", choices=("digits", "mnist5k"), default="digits",
                   help="digits (scikit-learn's) or mnist5k (5,000 MNIST digits; needs the "
                        "extra certunlearn[mnist])")
    p.add_argument("--seed", type=_SEED, default=None,
                   help="fix every random choice, the unlearning noise included (a "
                        "reproduction, not a private release)")
    _no_progress_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the certificate and model of an earlier run in --out")
    _threads_arg(p, default=1)
    p.set_defaults(handler=_demo)

    p = subparsers.add_parser("train", help="train a model (the one to unlearn from)",
                              epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("--data", choices=DATA_CHOICES, default="digits")
    p.add_argument("--data-root", help="directory of the MNIST IDX / CIFAR-10 pickle files")
    p.add_argument("--test-fraction", type=_FRACTION, default=0.2, help="digits, mnist5k only")
    p.add_argument("--split-seed", type=_SEED, default=0, help="digits, mnist5k only")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--hidden", type=_WIDTH, nargs="+", default=[64], help="MLP hidden widths")
    p.add_argument("--epochs", type=_EPOCHS, default=40.0)
    p.add_argument("--lr", type=_POS_FLOAT, default=0.05)
    p.add_argument("--batch-size", type=_POS_INT, default=64)
    p.add_argument("--seed", type=_SEED, default=None)
    p.add_argument("--out", required=True, help="path of the model file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _no_progress_arg(p)
    # one thread: 40 epochs of the digits MLP took 2.9-3.6 s on 1 thread and 6-8 s on torch's
    # default (2 threads) on a 2-core machine; larger models can ask for more
    _threads_arg(p, default=1)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("unlearn", help="unlearn a forget set as a config file describes",
                              epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("--config", required=True, help="YAML or JSON file (see docs/training.md)")
    p.add_argument("--sign-key", help="sign the certificate with this private key "
                                      "(from `certunlearn keygen`; overrides sign_key)")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN",
                   help="build the model with FN() and load the file's state dict into it "
                        "(overrides model_factory)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the certificate.json and model.pt of an earlier run in out "
                        "(never the model_file this run reads)")
    _no_progress_arg(p)
    p.add_argument("--dist-timeout", type=_POS_FLOAT, default=None, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the run "
                        "fails (default $CERTUNLEARN_DIST_TIMEOUT or 300)")
    p.set_defaults(handler=_unlearn_in_process_group)

    p = subparsers.add_parser("evaluate", help="accuracy and membership-inference AUC of a model",
                              epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("model", help="model file written by train, unlearn or demo")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN",
                   help="for a plain state dict: FN() builds the module")
    p.add_argument("--data", choices=DATA_CHOICES,
                   help="default: the data set recorded in the model file")
    p.add_argument("--data-root")
    p.add_argument("--forget-fraction", type=_FRACTION)
    p.add_argument("--forget-classes", type=_CLASS, nargs="+")
    p.add_argument("--forget-seed", type=_SEED)
    _no_progress_arg(p)  # evaluate shows none; accepted so every training command takes it
    _threads_arg(p)
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser(
        "verify", help="check a certificate (or a chain of them) against the accountant and a "
                       "model file",
        usage="certunlearn verify [-h] [--public-key PUB] CERT MODEL\n"
              "       certunlearn verify [-h] [--public-key PUB] --chain CERT [CERT ...] MODEL",
        description="Recompute the certificate's guarantee with the accountant from its "
                    "parameters, check every field that can be checked, the model's SHA-256 "
                    "and the signature, and list what a certificate alone cannot establish. "
                    "With --chain: certificates of sequential requests, each starting from the "
                    "previous one's output, and the final model.",
        epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("files", nargs="+", metavar="CERT... MODEL",
                   help="certificate.json file(s), then the model file")
    p.add_argument("--chain", action="store_true",
                   help="the certificates are sequential requests, in order")
    p.add_argument("--public-key", metavar="PUB",
                   help="require a valid signature by this key (KEYFILE.pub from keygen)")
    p.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                   help="build the model with this function (imported and run) to count its "
                        "private parameters when the model file records no bundled "
                        "architecture; without it such a file is checked as weights only")
    p.set_defaults(handler=_verify)

    p = subparsers.add_parser(
        "keygen", help="create an Ed25519 key pair for signing certificates",
        description="Write a private key to KEYFILE (mode 0600) and its public key to "
                    "KEYFILE.pub. Existing files are never overwritten.",
        epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("--out", required=True, metavar="KEYFILE")
    p.set_defaults(handler=_keygen)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="certunlearn",
        description="Certified unlearning by noisy fine-tuning on the retained data.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    theory_cli.register(subparsers)
    _register_training(subparsers)
    experiments_cli.register(subparsers)
    plan_cli.register(subparsers, epilog=_EPILOG, types=dict(
        real=_POS_FLOAT, pos_int=_POS_INT, seed=_SEED, fraction=_FRACTION, cls=_CLASS,
        threads=_THREADS, delta=_FRACTION, nonneg=_float_type(0.0, low_open=False),
        keep=_float_type(0.0, 1.0)))
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _QuietClosedPipe:
    """``sys.stdout`` for one command: once the reader has gone (``| head -1``), the rest of the
    output is dropped quietly, as other command-line tools do, and the command still ends with
    its own exit code."""

    def __init__(self, stream):
        self._stream = stream
        self.gone = False

    def _closed(self) -> None:
        self.gone = True
        try:  # the interpreter's last flush at exit must not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._closed()
        return len(text)

    def flush(self):
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    """Run the console script; return the exit code (never raises, never prints a traceback)."""
    stdout = sys.stdout
    guard = _QuietClosedPipe(stdout)
    sys.stdout = guard
    try:
        code = _main(argv)
        guard.flush()
        return code
    finally:
        if sys.stdout is guard:
            sys.stdout = stdout


def _main(argv=None) -> int:
    prog = "certunlearn"
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        prog = f"certunlearn {args.command}"
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        # a second Ctrl-C must not cut the exit short, and an interrupt that landed inside an
        # exec of a string must not make the interpreter kill itself at exit (interrupts.py)
        stop_interrupts()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        text = _one_line(exc)  # the parser's own errors already start with the program name
        print(text if text.startswith("certunlearn") else f"{prog}: error: {text}",
              file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - mapped to one line and an exit code below
        from .certificates import CertificateError
        from .config import ConfigFileError
        from .data import DataFileError
        from .model_files import ModelFileError
        from .signing import SigningError
        # OSError includes distributed.DistributedError (a ConnectionError): a rank that
        # stopped or timed out, or replicas that diverged, under torchrun
        if isinstance(exc, (FileProblem, ModelFileError, CertificateError, SigningError,
                            DataFileError, ConfigFileError, OSError)):
            code = EXIT_FAILED
        elif isinstance(exc, ValueError):
            code = EXIT_USAGE
        else:  # a defect: still one line, with the exception's type to report it
            print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)}",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    run_command(lambda: main)
