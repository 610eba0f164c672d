"""The ``certunlearn`` console script: accountant subcommands plus the training subcommands.

Accountant subcommands import no torch; training subcommands (demo, train, unlearn, evaluate,
verify) import it inside their handlers, when they run.
"""
from __future__ import annotations

import argparse
import sys

from certunlearn_theory import cli as theory_cli

from .experiments import cli as experiments_cli


def _set_threads(n):
    if n is not None:
        import torch
        torch.set_num_threads(int(n))


def _threads_arg(p, default=None):
    p.add_argument("--threads", type=int, default=default,
                   help="torch intra-op threads (tiny models run fastest on 1)"
                        + ("" if default is None else f"; default {default}"))


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------

def _demo(args) -> int:
    _set_threads(args.threads)
    from .demo import run_demo
    result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"output folder: {result['out']}")
    return 0


def _load_data(name, root, test_fraction, split_seed):
    from .data import load_dataset
    return load_dataset(name, root, test_fraction=test_fraction, split_seed=split_seed)


def _forget_split(train_set, fraction, classes, seed):
    from .data import select_forget, split_forget
    idx = select_forget(train_set.y, fraction=fraction, classes=classes, seed=seed)
    return split_forget(train_set, idx)


def _train(args) -> int:
    _set_threads(args.threads)
    import torch
    from .certificates import save_model_file
    from .demo import model_arch
    from .evaluate import evaluate_model
    from .models import build_model
    from .train import train
    train_set, test_set = _load_data(args.data, args.data_root, args.test_fraction,
                                     args.split_seed)
    kwargs = {"hidden": tuple(args.hidden)} if args.model == "mlp" else {}
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = build_model(args.model, train_set.x.shape[1:], train_set.num_classes, **kwargs)
    train(model, train_set.tensors(), epochs=args.epochs, lr=args.lr,
          batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress)
    data_info = {"name": args.data, "root": args.data_root, "test_fraction": args.test_fraction,
                 "split_seed": args.split_seed}
    save_model_file(args.out, model, model_arch(args.model, train_set.x.shape[1:],
                                                train_set.num_classes, data_info, **kwargs))
    r = evaluate_model(model, retain=train_set.tensors(), test=test_set.tensors())
    print(f"trained {args.model} on {len(train_set)} {args.data} images: train acc "
          f"{r['retain_acc']:.3f}, test acc {r['test_acc']:.3f}; wrote {args.out}")
    return 0


def _load_model(path):
    from .certificates import load_model_file
    from .demo import model_from_arch
    state, arch = load_model_file(path)
    if not arch:
        raise ValueError(f"{path}: no architecture record; save models with `certunlearn train`")
    return model_from_arch(arch, state), arch


def _unlearn(args) -> int:
    import os
    from .config import load_config
    cfg = load_config(args.config)
    _set_threads(cfg["threads"])
    from .baselines import output_perturbation, retrain
    from .certificates import save_model_file
    from .evaluate import evaluate_model
    from .unlearn import unlearn
    model, arch = _load_model(cfg["model_file"])
    train_set, test_set = _load_data(cfg["data"], cfg["data_root"], cfg["test_fraction"],
                                     cfg["split_seed"])
    retain_set, forget_set = _forget_split(train_set, cfg["forget_fraction"],
                                           cfg["forget_classes"], cfg["forget_seed"])
    retain = retain_set.tensors()
    progress = not args.no_progress
    common = dict(forget_size=len(forget_set), seed=cfg["seed"], progress=progress)
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
        out_model, cert = unlearn(
            model, retain, eps=cfg["eps"], delta=cfg["delta"], method=method,
            steps=cfg["steps"], epochs=cfg["epochs"], C0=cfg["C0"],
            C1=cfg["C1"] if cfg["C1"] is not None else float("inf"), lr=cfg["lr"],
            lam=cfg["lam"], C2=cfg["C2"], sigma0=cfg["sigma0"], batch_size=cfg["batch_size"],
            clip=cfg["clip"], finetune_epochs=cfg["finetune_epochs"],
            finetune_lr=cfg["finetune_lr"], **common)
    os.makedirs(cfg["out"], exist_ok=True)
    model_path = os.path.join(cfg["out"], "model.pt")
    cert_path = os.path.join(cfg["out"], "certificate.json")
    arch = dict(arch, data=dict(arch.get("data") or {}, forget_fraction=cfg["forget_fraction"],
                                forget_classes=cfg["forget_classes"],
                                forget_seed=cfg["forget_seed"]))
    save_model_file(model_path, out_model, arch)
    cert.save(cert_path)
    r = evaluate_model(out_model, retain=retain, forget=forget_set.tensors(),
                       test=test_set.tensors())
    print(f"{method}: ({cert.epsilon:.4g}, {cert.delta:.3g})-unlearning of {len(forget_set)} "
          f"points; test acc {r['test_acc']:.3f}, retain acc {r['retain_acc']:.3f}, forget acc "
          f"{r['forget_acc']:.3f}, MIA AUC {r['mia_auc']:.3f}")
    print(f"wrote {cert_path} and {model_path}")
    return 0


def _evaluate(args) -> int:
    _set_threads(args.threads)
    from .evaluate import evaluate_model
    model, arch = _load_model(args.model)
    data = dict(arch.get("data") or {})
    name = args.data or data.get("name", "digits")
    root = args.data_root or data.get("root")
    train_set, test_set = _load_data(name, root, data.get("test_fraction", 0.2),
                                     data.get("split_seed", 0))
    fraction, classes = args.forget_fraction, args.forget_classes
    if fraction is None and classes is None:
        fraction, classes = data.get("forget_fraction"), data.get("forget_classes")
    if fraction is None and classes is None:
        r = evaluate_model(model, retain=train_set.tensors(), test=test_set.tensors())
        print(f"train acc {r['retain_acc']:.4f}  test acc {r['test_acc']:.4f}")
        return 0
    retain_set, forget_set = _forget_split(train_set, fraction, classes,
                                           args.forget_seed if args.forget_seed is not None
                                           else data.get("forget_seed", 0))
    r = evaluate_model(model, retain=retain_set.tensors(), forget=forget_set.tensors(),
                       test=test_set.tensors())
    print(f"test acc {r['test_acc']:.4f}  retain acc {r['retain_acc']:.4f}  forget acc "
          f"{r['forget_acc']:.4f}  MIA AUC {r['mia_auc']:.4f}")
    return 0


def _verify(args) -> int:
    from .certificates import CertificateError, RunCertificate, load_model_file
    try:
        cert = RunCertificate.load(args.certificate)
        state, _ = load_model_file(args.model)
        cert.verify(state)
    except CertificateError as exc:
        print(f"certunlearn verify: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"certunlearn verify: OK: {cert.method}, ({cert.epsilon:.6g}, {cert.delta:.6g})-"
          f"unlearning reproduced by the accountant; model weights match (SHA-256 "
          f"{cert.model_sha256_after[:16]}...)")
    if cert.noise_seed_user_supplied:
        print("warning: this run used a caller-chosen noise seed: it is a reproduction, not a "
              "private release", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

def _register_training(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train on digits, forget 10%% with a certificate, compare with retraining",
        description="Train an MLP on scikit-learn's digits, unlearn a random 10%% of the "
                    "training set by gradient clipping at (eps, delta) = (1, 1e-5), fine-tune, "
                    "and compare with retraining from scratch. Writes certificate.json and "
                    "model.pt.")
    p.add_argument("--out", help="output folder (default: a fresh folder under runs/)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.add_argument("--seed", type=int, default=None,
                   help="fix every random choice, the unlearning noise included (a "
                        "reproduction, not a private release)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _threads_arg(p, default=1)
    p.set_defaults(handler=_demo)

    p = subparsers.add_parser("train", help="train a model (the one to unlearn from)")
    p.add_argument("--data", choices=("digits", "mnist", "cifar10"), default="digits")
    p.add_argument("--data-root", help="directory of the MNIST IDX / CIFAR-10 pickle files")
    p.add_argument("--test-fraction", type=float, default=0.2, help="digits only")
    p.add_argument("--split-seed", type=int, default=0, help="digits only")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--hidden", type=int, nargs="+", default=[64], help="MLP hidden widths")
    p.add_argument("--epochs", type=float, default=40.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", required=True, help="path of the model file to write")
    p.add_argument("--no-progress", action="store_true")
    _threads_arg(p)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("unlearn", help="unlearn a forget set as a config file describes")
    p.add_argument("--config", required=True, help="YAML or JSON file (see docs/training.md)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_unlearn)

    p = subparsers.add_parser("evaluate", help="accuracy and membership-inference AUC of a model")
    p.add_argument("model", help="model file written by train, unlearn or demo")
    p.add_argument("--data", choices=("digits", "mnist", "cifar10"),
                   help="default: the data set recorded in the model file")
    p.add_argument("--data-root")
    p.add_argument("--forget-fraction", type=float)
    p.add_argument("--forget-classes", type=int, nargs="+")
    p.add_argument("--forget-seed", type=int)
    _threads_arg(p)
    p.set_defaults(handler=_evaluate)

    p = subparsers.add_parser(
        "verify", help="check a certificate against the accountant and a model file",
        description="Exit 0 when the accountant reproduces the certificate's guarantee from its "
                    "parameters and the model's weights match its SHA-256; exit 1 with the "
                    "reason otherwise.")
    p.add_argument("certificate", help="certificate.json")
    p.add_argument("model", help="model.pt")
    p.set_defaults(handler=_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certunlearn",
        description="Certified unlearning by noisy fine-tuning on the retained data.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    theory_cli.register(subparsers)
    _register_training(subparsers)
    experiments_cli.register(subparsers)
    return parser


def main(argv=None) -> int:
    return theory_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
