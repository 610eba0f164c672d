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
import contextlib
import os
import sys

from certunlearn_theory import cli as theory_cli

from . import plan_cli
from .cli_common import (
    CLASS,
    DATA_CHOICES,
    EPILOG,
    EPOCHS,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_VERIFIABLE,
    EXIT_OK,
    EXIT_USAGE,
    FRACTION,
    POS_FLOAT,
    POS_INT,
    SEED,
    THREADS,
    WIDTH,
    FileProblem,
    OutputFolder,
    Parser,
    UsageError,
    check_model_kind,
    check_output_file,
    check_results,
    float_type,
    fmt_guarantee,
    forget_split,
    load_data,
    no_progress_arg,
    one_line,
    set_threads,
    show_progress,
    threads_arg,
)
from .cli_verify import keygen_command, verify_command
from .experiments import cli as experiments_cli
from .files import write_together
from .interrupts import run_command, stop_interrupts
from .ledger_cli import LEDGER_FILE, ledger_path_for, next_request, source_ledger

__all__ = ["main", "build_parser", "EXIT_CODES", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE",
           "EXIT_NOT_VERIFIABLE", "EXIT_INTERRUPTED"]


def _demo(args) -> int:
    from .demo import fresh_run_dir_name, run_demo
    if args.out is not None and not args.out.strip():
        raise UsageError("--out must name a folder, got an empty string (leave --out out for a "
                         "fresh folder under runs/)")
    out = args.out or fresh_run_dir_name("demo")
    check_results([os.path.join(out, f) for f in ("model.pt", "certificate.json", "ledger.json")], [],
                   args.overwrite)
    with OutputFolder(out):
        set_threads(args.threads)
        result = run_demo(out, quick=args.quick, seed=args.seed, progress=show_progress(args),
                          data=args.data)
    print(f"output folder: {result['out']}")
    return 0


def _train(args) -> int:
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is an existing directory; give a file path")
    check_results([args.out], [], args.overwrite)
    with OutputFolder(os.path.dirname(os.path.abspath(args.out))):  # runs/ made if missing
        check_output_file(args.out, "--out")
        return _train_work(args)


def _train_work(args) -> int:
    set_threads(args.threads)
    import torch

    from .evaluate import evaluate_model
    from .model_files import model_arch, model_file_bytes
    from .models import build_model
    from .train import train
    train_set, test_set = load_data(args.data, args.data_root, args.test_fraction,
                                     args.split_seed)
    kwargs = {"hidden": tuple(args.hidden)} if args.model == "mlp" else {}
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = build_model(args.model, train_set.x.shape[1:], train_set.num_classes, **kwargs)
    train(model, train_set.tensors(), epochs=args.epochs, lr=args.lr,
          batch_size=args.batch_size, seed=args.seed, progress=show_progress(args))
    data_info = {"name": args.data, "root": args.data_root, "test_fraction": args.test_fraction,
                 "split_seed": args.split_seed}
    write_together([(args.out, model_file_bytes(model, model_arch(
        args.model, train_set.x.shape[1:], train_set.num_classes, data_info, **kwargs)))])
    r = evaluate_model(model, retain=train_set.tensors(), test=test_set.tensors())
    print(f"trained {args.model} on {len(train_set)} {args.data} images: train acc "
          f"{r['retain_acc']:.3f}, test acc {r['test_acc']:.3f}; wrote {args.out}")
    return 0


def _unlearn(args) -> int:

    from . import distributed
    from .config import load_config
    cfg = load_config(args.config)
    if args.sign_key is not None:
        cfg["sign_key"] = args.sign_key
    if args.model_factory is not None:
        cfg["model_factory"] = args.model_factory
    writer = distributed.is_writer()  # data parallel: only rank 0 signs and writes files
    if writer:  # before any work: never an input, never an earlier result unless --overwrite
        check_results([os.path.join(cfg["out"], "model.pt"),
                        os.path.join(cfg["out"], "certificate.json"),
                        os.path.join(cfg["out"], "ledger.json")],
                       [cfg["model_file"], cfg["forget_indices_file"], cfg["sign_key"],
                        args.config,
                        os.path.join(os.path.dirname(os.path.abspath(cfg["model_file"])),
                                     "ledger.json")], args.overwrite)
    if cfg["method"] in ("gradient_clipping", "model_clipping"):
        from .unlearn import check_settings  # every scalar, before the model and data load
        check_settings(**_unlearn_settings(cfg))
    sign_key = None
    if cfg["sign_key"] is not None and writer:  # a bad key fails before the work, not after
        from .signing import load_private_key
        sign_key = load_private_key(cfg["sign_key"])
    from .model_files import load_model
    model, arch = load_model(cfg["model_file"], cfg["model_factory"])
    check_model_kind(model, cfg["model_file"])
    with OutputFolder(cfg["out"]) if writer else contextlib.nullcontext():
        set_threads(cfg["threads"])
        return _unlearn_work(cfg, model, arch, sign_key, progress=show_progress(args))


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
    train_set, test_set = load_data(cfg["data"], cfg["data_root"], cfg["test_fraction"],
                                     cfg["split_seed"])
    data_info = {"name": cfg["data"], "root": cfg["data_root"],
                 "test_fraction": cfg["test_fraction"], "split_seed": cfg["split_seed"]}
    ledger = source_ledger(cfg["model_file"], arch, model, len(train_set), data_info)
    request = next_request(ledger, train_set, cfg["forget_fraction"], cfg["forget_classes"],
                           cfg["forget_seed"], cfg["forget_indices_file"])
    retain_set = train_set.subset(request.retain_indices)
    forget_set = train_set.subset(list(request.forget_indices))
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
    cert = request.bind(cert)  # the entry goes under the signature
    if sign_key is not None:
        cert = cert.sign(sign_key)
    ledger = ledger.commit(request, cert)
    model_path = os.path.join(cfg["out"], "model.pt")
    cert_path = os.path.join(cfg["out"], "certificate.json")
    ledger_path = os.path.join(cfg["out"], LEDGER_FILE)
    arch = dict(arch, ledger={"file": LEDGER_FILE, "head": ledger.head(),
                              "request": request.entry["request"]}, data=dict(
        arch.get("data") or {}, **data_info, forget_fraction=cfg["forget_fraction"],
        forget_classes=cfg["forget_classes"], forget_seed=cfg["forget_seed"],
        forget_indices_file=None if cfg["forget_indices_file"] is None
        else os.path.abspath(cfg["forget_indices_file"])))
    # both files or neither: a failure while writing leaves an earlier result as it was
    write_together([(model_path, model_file_bytes(out_model, arch)),
                    (cert_path, (cert.to_json() + "\n").encode()),
                    (ledger_path, ledger.to_bytes())])
    r = evaluate_model(out_model, retain=retain, forget=forget_set.tensors(),
                       test=test_set.tensors())
    print(f"{cert.method}: {fmt_guarantee(cert.eps, cert.delta)}-unlearning of "
          f"{len(forget_set)} points; test acc {r['test_acc']:.3f}, retain acc "
          f"{r['retain_acc']:.3f}, forget acc {r['forget_acc']:.3f}, MIA AUC {r['mia_auc']:.3f}")
    print(f"wrote {cert_path}, {model_path} and {ledger_path} (request "
          f"{request.entry['request']}: {request.entry['forgotten_before'] + len(forget_set)} "
          f"points forgotten so far)" + (" (signed)" if sign_key is not None else ""))
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
    set_threads(args.threads)
    from .evaluate import evaluate_model
    from .model_files import load_model
    model, arch = load_model(args.model, args.model_factory)
    data = dict(arch.get("data") or {})
    name = args.data or data.get("name", "digits")
    root = args.data_root or data.get("root")
    train_set, test_set = load_data(name, root, data.get("test_fraction", 0.2),
                                     data.get("split_seed", 0))
    ledger_file = ledger_path_for(args.model, arch)
    if ledger_file is not None and args.forget_fraction is None and args.forget_classes is None:
        from .ledger import Ledger
        ledger = Ledger.load(ledger_file)  # the sets of the request that produced the model
        forget = ledger.requests[-1]["forget_indices"]
        r = evaluate_model(model, retain=train_set.subset(ledger.remaining()).tensors(),
                           forget=train_set.subset(forget).tensors(), test=test_set.tensors())
        print(f"test acc {r['test_acc']:.4f}  retain acc {r['retain_acc']:.4f}  forget acc "
              f"{r['forget_acc']:.4f}  MIA AUC {r['mia_auc']:.4f}  (request "
              f"{len(ledger.requests)} of {ledger_file})")
        return 0
    fraction, classes, indices_file = args.forget_fraction, args.forget_classes, None
    if fraction is None and classes is None:
        fraction, classes = data.get("forget_fraction"), data.get("forget_classes")
        indices_file = data.get("forget_indices_file")
    if fraction is None and classes is None and indices_file is None:
        r = evaluate_model(model, retain=train_set.tensors(), test=test_set.tensors())
        print(f"train acc {r['retain_acc']:.4f}  test acc {r['test_acc']:.4f}")
        return 0
    retain_set, forget_set = forget_split(train_set, fraction, classes,
                                           args.forget_seed if args.forget_seed is not None
                                           else data.get("forget_seed", 0), indices_file)
    r = evaluate_model(model, retain=retain_set.tensors(), forget=forget_set.tensors(),
                       test=test_set.tensors())
    print(f"test acc {r['test_acc']:.4f}  retain acc {r['retain_acc']:.4f}  forget acc "
          f"{r['forget_acc']:.4f}  MIA AUC {r['mia_auc']:.4f}")
    return 0


def _register_training(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "demo", help="train on digits, forget 10%% with a certificate, compare with retraining",
        description="Train an MLP on scikit-learn's digits, unlearn a random 10% of the "
                    "training set by gradient clipping at (eps, delta) = (1, 1e-5), fine-tune, "
                    "and compare with retraining from scratch. Writes certificate.json and "
                    "model.pt.", epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--out", help="output folder (default: a fresh folder under runs/)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.add_argument("--data", choices=("digits", "mnist5k"), default="digits",
                   help="digits (scikit-learn's) or mnist5k (5,000 MNIST digits; needs the "
                        "extra certunlearn[mnist])")
    p.add_argument("--seed", type=SEED, default=None,
                   help="fix every random choice, the unlearning noise included (a "
                        "reproduction, not a private release)")
    no_progress_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the certificate and model of an earlier run in --out")
    threads_arg(p, default=1)
    p.set_defaults(handler=_demo)

    p = subparsers.add_parser("train", help="train a model (the one to unlearn from)",
                              epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--data", choices=DATA_CHOICES, default="digits")
    p.add_argument("--data-root", help="directory of the MNIST IDX / CIFAR-10 pickle files")
    p.add_argument("--test-fraction", type=FRACTION, default=0.2, help="digits, mnist5k only")
    p.add_argument("--split-seed", type=SEED, default=0, help="digits, mnist5k only")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--hidden", type=WIDTH, nargs="+", default=[64], help="MLP hidden widths")
    p.add_argument("--epochs", type=EPOCHS, default=40.0)
    p.add_argument("--lr", type=POS_FLOAT, default=0.05)
    p.add_argument("--batch-size", type=POS_INT, default=64)
    p.add_argument("--seed", type=SEED, default=None)
    p.add_argument("--out", required=True, help="path of the model file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    no_progress_arg(p)
    # one thread: 40 epochs of the digits MLP took 2.9-3.6 s on 1 thread and 6-8 s on torch's
    # default (2 threads) on a 2-core machine; larger models can ask for more
    threads_arg(p, default=1)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("unlearn", help="unlearn a forget set as a config file describes",
                              epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--config", required=True, help="YAML or JSON file (see docs/training.md)")
    p.add_argument("--sign-key", help="sign the certificate with this private key "
                                      "(from `certunlearn keygen`; overrides sign_key)")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN",
                   help="build the model with FN() and load the file's state dict into it "
                        "(overrides model_factory)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the certificate.json and model.pt of an earlier run in out "
                        "(never the model_file this run reads)")
    no_progress_arg(p)
    p.add_argument("--dist-timeout", type=POS_FLOAT, default=None, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the run "
                        "fails (default $CERTUNLEARN_DIST_TIMEOUT or 300)")
    p.set_defaults(handler=_unlearn_in_process_group)

    p = subparsers.add_parser("evaluate", help="accuracy and membership-inference AUC of a model",
                              epilog=EPILOG, formatter_class=fmt)
    p.add_argument("model", help="model file written by train, unlearn or demo")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN",
                   help="for a plain state dict: FN() builds the module")
    p.add_argument("--data", choices=DATA_CHOICES,
                   help="default: the data set recorded in the model file")
    p.add_argument("--data-root")
    p.add_argument("--forget-fraction", type=FRACTION)
    p.add_argument("--forget-classes", type=CLASS, nargs="+")
    p.add_argument("--forget-seed", type=SEED)
    no_progress_arg(p)  # evaluate shows none; accepted so every training command takes it
    threads_arg(p)
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser(
        "verify", help="check a certificate (or a chain of them) against the accountant and a "
                       "model file",
        usage="certunlearn verify [-h] [--public-key PUB] CERT MODEL\n"
              "       certunlearn verify [-h] [--public-key PUB] --chain CERT [CERT ...] MODEL\n"
              "       certunlearn verify [-h] [--public-key PUB] CERT POSTPROCESS.json MODEL",
        description="Recompute the certificate's guarantee with the accountant from its "
                    "parameters, check every field that can be checked, the model's SHA-256 "
                    "and the signature, and list what a certificate alone cannot establish. "
                    "With --chain: certificates of sequential requests, each starting from the "
                    "previous one's output, and the final model. With a post-processing "
                    "record (certunlearn.postprocess/1) between them: the certificate of the "
                    "noisy phase, the record of the user's own post-processing, the final "
                    "model.",
        epilog=EPILOG, formatter_class=fmt)
    p.add_argument("files", nargs="+", metavar="CERT... MODEL",
                   help="certificate.json file(s), then the model file")
    p.add_argument("--chain", action="store_true",
                   help="the certificates are sequential requests, in order")
    p.add_argument("--public-key", metavar="PUB",
                   help="require a valid signature by this key (KEYFILE.pub from keygen)")
    p.add_argument("--ledger", metavar="LEDGER",
                   help="the ledger.json of the last request: every certificate's entry must "
                        "be in it, with the model it records")
    p.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                   help="build the model with this function (imported and run) to count its "
                        "private parameters when the model file records no bundled "
                        "architecture; without it such a file is checked as weights only")
    p.set_defaults(handler=verify_command)

    p = subparsers.add_parser(
        "keygen", help="create an Ed25519 key pair for signing certificates",
        description="Write a private key to KEYFILE (mode 0600) and its public key to "
                    "KEYFILE.pub. Existing files are never overwritten.",
        epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--out", required=True, metavar="KEYFILE")
    p.set_defaults(handler=keygen_command)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="certunlearn",
        description="Certified unlearning by noisy fine-tuning on the retained data.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    theory_cli.register(subparsers)
    _register_training(subparsers)
    experiments_cli.register(subparsers)
    plan_cli.register(subparsers, epilog=EPILOG, types=dict(
        real=POS_FLOAT, pos_int=POS_INT, seed=SEED, fraction=FRACTION, cls=CLASS,
        threads=THREADS, delta=FRACTION, nonneg=float_type(0.0, low_open=False),
        keep=float_type(0.0, 1.0)))
    return parser


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
        from .allocator import keep_freed_memory
        keep_freed_memory()  # large per-step tensors reuse freed memory (allocator.py)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        # a second Ctrl-C must not cut the exit short, and an interrupt that landed inside an
        # exec of a string must not make the interpreter kill itself at exit (interrupts.py)
        stop_interrupts()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        text = one_line(exc)  # the parser's own errors already start with the program name
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
            print(f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)}",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    run_command(lambda: main)
