"""``certunlearn plan``: whether certified unlearning can beat retraining, in seconds.

    certunlearn plan MODEL --data digits --eps 1 [--delta 1e-5] [knobs] [--plot FILE]
    certunlearn plan --config unlearn.yaml [--eps 0.5,1,10,100]

Takes what ``unlearn`` takes (a model file and a data set, or an unlearn config file) plus eps
and delta, and prints :func:`certunlearn_train.plan.plan`'s report. The probe's accuracy is
measured on the data set's test split. Errors are one line and the exit codes of ``unlearn``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Dict, List, Optional

from .cli_common import UsageError, check_model_kind, check_output_file, forget_split, load_data, set_threads

__all__ = ["register", "run_plan_command"]


def _eps_list(text: str) -> List[float]:
    from .checks import real_problem
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or a comma-separated list of "
                                         f"them, got {text!r}")
    for v in values:
        problem = real_problem(v, low=0.0, noun="a finite number", fmt=lambda b: f"{b:g}")
        if problem:
            raise argparse.ArgumentTypeError(f"must be {problem} (each value), got {text!r}")
    return values


def _settings(args) -> Dict[str, Any]:
    """Model file, data and knobs from the command line or the unlearn config file."""
    keys = ("data", "data_root", "test_fraction", "split_seed", "forget_fraction",
            "forget_classes", "forget_indices_file", "forget_seed", "method", "steps", "epochs",
            "C0", "C1", "C2", "sigma0", "lr", "lam", "batch_size", "clip", "seed",
            "model_factory", "threads")
    if args.config is not None:
        if args.model is not None:
            raise UsageError("give a MODEL file or --config, not both")
        from .config import load_config
        cfg = load_config(args.config)
        if cfg["method"] not in ("gradient_clipping", "model_clipping"):
            raise UsageError(f"{args.config}: plan covers the noisy-phase methods "
                             f"gradient_clipping and model_clipping, got method "
                             f"{cfg['method']!r}")
        s = {k: cfg[k] for k in keys}
        s["model_file"] = cfg["model_file"]
        s["eps"] = args.eps if args.eps is not None else [cfg["eps"]]
        s["delta"] = args.delta if args.delta is not None else cfg["delta"]
        for k in ("model_factory", "threads", "seed"):
            if getattr(args, k) is not None:
                s[k] = getattr(args, k)
        return s
    if args.model is None:
        raise UsageError("give a MODEL file (from certunlearn train) or --config FILE")
    if args.eps is None:
        raise UsageError("--eps is required (a number > 0, or a comma-separated list)")
    s = {k: getattr(args, k, None) for k in keys}
    s["model_file"] = args.model
    s["eps"] = args.eps
    s["delta"] = args.delta if args.delta is not None else 1e-5
    if s["forget_fraction"] is None and s["forget_classes"] is None \
            and s["forget_indices_file"] is None:
        s["forget_fraction"] = 0.1
    return s


def run_plan_command(args) -> int:
    s = _settings(args)
    if args.plot is not None:
        check_output_file(args.plot, "--plot")
    if args.method is not None:
        s["method"] = args.method
    set_threads(s["threads"] if s["threads"] is not None else 1)
    from .model_files import load_model
    model, arch = load_model(s["model_file"], s["model_factory"])
    check_model_kind(model, s["model_file"])  # as unlearn: a file of the wrong kind, exit 1
    recorded = dict(arch.get("data") or {})
    name = s["data"] or recorded.get("name", "digits")
    root = s["data_root"] or recorded.get("root")
    test_fraction = s["test_fraction"] if s["test_fraction"] is not None \
        else recorded.get("test_fraction", 0.2)
    split_seed = s["split_seed"] if s["split_seed"] is not None \
        else recorded.get("split_seed", 0)
    train_set, test_set = load_data(name, root, test_fraction, split_seed)
    if args.classes:
        import numpy as np
        train_set = train_set.subset(np.flatnonzero(np.isin(train_set.y, args.classes)))
        test_set = test_set.subset(np.flatnonzero(np.isin(test_set.y, args.classes)))
        if len(train_set) == 0 or len(test_set) == 0:
            raise ValueError(f"--classes {args.classes} selects no {name} image")
    retain_set, forget_set = forget_split(train_set, s["forget_fraction"], s["forget_classes"],
                                           s["forget_seed"] or 0, s["forget_indices_file"])
    from .plan import format_plan, plan, plot_plan
    eps = s["eps"]
    progress = sys.stderr.isatty() and not args.no_progress
    result = plan(model, retain_set.tensors(), eps=eps[0], eps_grid=eps[1:], delta=s["delta"],
                  method=s["method"] or "gradient_clipping", steps=s["steps"],
                  epochs=s["epochs"], C0=s["C0"], C1=s["C1"], C2=s["C2"],
                  sigma0=s["sigma0"] or 0.0, lr=s["lr"] if s["lr"] is not None else 0.05,
                  lam=s["lam"] or 0.0, batch_size=s["batch_size"] or 64,
                  clip=s["clip"] or "batch", private=args.private or None,
                  probe=not args.no_probe, eval_data=test_set.tensors(), seed=s["seed"],
                  keep=args.keep, progress=progress)
    if args.plot is not None:
        if args.no_probe:
            raise ValueError("--plot draws the probes: drop --no-probe")
        plot_plan(result, args.plot)
    if args.json:
        print(json.dumps(_jsonable(result.to_dict()), indent=1, sort_keys=True))
        return 0
    what = (f"{name}: {len(retain_set):,} retain points ({len(forget_set):,} to forget), "
            f"{len(test_set):,} test points")
    print(format_plan(result, what))
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def register(subparsers, *, epilog: str = "", types: Optional[Dict[str, Any]] = None) -> None:
    """Add the ``plan`` subcommand; ``types`` are cli.py's argument types (so plan refuses a
    value with the same words as the other subcommands)."""
    t = types or {}
    real = t.get("real", float)
    pos_int = t.get("pos_int", int)
    seed = t.get("seed", int)
    fraction = t.get("fraction", float)
    p = subparsers.add_parser(
        "plan", help="in seconds: can certified unlearning beat retraining for this model?",
        description="For a model and its data: sigma from the accountant, the expected norm of "
                    "all the noise the noisy phase adds against C0 and the model, one run of "
                    "the noisy phase on a copy (accuracy right after it on the test split, next "
                    "to the original's and chance), and a verdict in plain words. Knobs not "
                    "given (C0, --steps, C1 or C2) are searched with the accountant. A probe "
                    "is evidence, not a measurement: `certunlearn experiment` measures.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="model file (from certunlearn train)")
    p.add_argument("--config", help="an unlearn config file instead (its model_file, data, "
                                    "forget set and knobs)")
    p.add_argument("--eps", type=_eps_list, metavar="EPS[,EPS...]",
                   help="target eps; a list probes each (the verdict is about the first)")
    p.add_argument("--delta", type=t.get("delta", float), help="target delta (default 1e-5)")
    p.add_argument("--data", choices=("digits", "mnist5k", "mnist", "cifar10"),
                   help="default: the data set recorded in the model file, else digits")
    p.add_argument("--data-root", help="directory of the MNIST IDX / CIFAR-10 pickle files")
    p.add_argument("--test-fraction", type=fraction, help="digits, mnist5k only")
    p.add_argument("--split-seed", type=seed)
    p.add_argument("--classes", type=t.get("cls", int), nargs="+",
                   help="keep only these labels (a head trained on some classes)")
    p.add_argument("--forget-fraction", type=fraction, help="default 0.1")
    p.add_argument("--forget-classes", type=t.get("cls", int), nargs="+")
    p.add_argument("--forget-indices-file")
    p.add_argument("--forget-seed", type=seed)
    p.add_argument("--method", choices=("gradient_clipping", "model_clipping"))
    p.add_argument("--C0", type=real)
    p.add_argument("--C1", type=real)
    p.add_argument("--C2", type=real)
    p.add_argument("--sigma0", type=t.get("nonneg", float))
    p.add_argument("--steps", type=pos_int)
    p.add_argument("--epochs", type=real)
    p.add_argument("--lr", type=real, help="noisy step size (default 0.05)")
    p.add_argument("--lam", type=t.get("nonneg", float))
    p.add_argument("--batch-size", type=pos_int)
    p.add_argument("--clip", choices=("batch", "per_sample"))
    p.add_argument("--private", nargs="+", metavar="NAME",
                   help="names of the private parameters (default: all trainable ones)")
    p.add_argument("--keep", type=t.get("keep", float), default=0.9,
                   help="fraction of the original accuracy the noisy model should keep "
                        "(default 0.9)")
    p.add_argument("--seed", type=seed, help="the probe's noise and batches (reproducible)")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN")
    p.add_argument("--no-probe", action="store_true", help="the accountant's numbers only")
    p.add_argument("--plot", metavar="FILE", help="accuracy after the noisy phase vs eps (PNG)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--threads", type=t.get("threads", int), help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run_plan_command)
