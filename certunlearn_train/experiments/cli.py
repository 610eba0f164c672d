"""``certunlearn experiment``: does certified unlearning save compute against retraining?

    certunlearn experiment --preset digits --out runs/exp-digits
    certunlearn experiment --config my_experiment.yaml --out runs/mine

A results folder can be resumed: rerun the same command and finished units are read back.
"""
from __future__ import annotations

import sys

__all__ = ["register", "run_experiment_command"]


def _eps_list(text: str):
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--eps must be a comma-separated list of numbers, got {text!r}") \
            from None
    if not values:
        raise ValueError(f"--eps must list at least one value, got {text!r}")
    return values


#: What each preset runs and about how long it takes, printed when neither --preset nor --config
#: is given (an experiment is never started by default).
PRESET_PLANS = {
    "digits": "6 methods x 8 configurations, then 5 seeds; about 3.3 minutes on 2 idle CPU "
              "cores, 12 when shared",
    "digits-quick": "the smoke test; under a minute",
    "digits-transfer": "frozen backbone, private head, 3 seeds at 6 eps; minutes on 2 CPU cores",
    "mnist": "the paper's MNIST set-up from local files (--data-root); meant for a GPU",
    "cifar10": "the paper's CIFAR-10 set-up from local files (--data-root); meant for a GPU",
}


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def run_experiment_command(args) -> int:
    import os

    from .presets import ExperimentConfigError, get_preset, load_config_file
    if args.preset is None and args.config is None:
        plans = "; ".join(f"{name}: {plan}" for name, plan in PRESET_PLANS.items())
        print(f"certunlearn experiment: give --preset NAME or --config FILE ({plans})",
              file=sys.stderr)
        return 2
    if args.config is not None and not os.path.isfile(args.config):
        print(f"certunlearn experiment: config file {args.config!r} does not exist",
              file=sys.stderr)
        return 1
    from .runner import Experiment
    overrides = {"seeds": args.seeds, "data_root": args.data_root, "threads": args.threads,
                 "device": args.device}
    try:
        if args.eps is not None:
            eps = _eps_list(args.eps)
            overrides["eps"] = eps
            overrides["main_eps"] = 1.0 if 1.0 in eps else eps[0]
        if args.config:
            cfg = load_config_file(args.config, **overrides)
        else:
            cfg = get_preset(args.preset, **overrides)
        if cfg["device"].startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise ValueError(f"--device {cfg['device']} needs CUDA, and torch sees no CUDA "
                                 "device here (use cpu or auto)")
    except (ExperimentConfigError, ValueError) as exc:
        print(f"certunlearn experiment: {exc}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", f"experiment-{cfg.get('name', 'custom')}")
    try:
        exp = Experiment(cfg, out, progress=not args.no_progress and _stderr_is_a_terminal())
        exp.run()
    except OSError as exc:
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"certunlearn experiment: cannot read or write{where}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"results in {out}: curves.jsonl, summary.csv, table.md, figures/, certificates/")
    return 0


def register(subparsers) -> None:
    """Add the ``experiment`` subcommand to the ``certunlearn`` parser."""
    from .presets import PRESETS
    p = subparsers.add_parser(
        "experiment", help="unlearning vs retraining: epochs to a target accuracy, over seeds",
        description="Run every method (gradient_clipping, model_clipping, output_perturbation, "
                    "dpsgd_group, retrain, retrain_init_scale), each tuned on a validation "
                    "split with the same number of configurations, over several seeds; write "
                    "per-epoch curves (curves.jsonl), summary.csv, table.md, figures/*.png and "
                    "every certificate. Rerunning with the same --out resumes.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="set-up to run: digits (about 3.3 minutes on 2 idle CPU cores), "
                          "digits-quick (under a minute), digits-transfer, mnist, cifar10; "
                          "without --preset or --config the command lists them and exits")
    src.add_argument("--config", help="YAML or JSON file: 'preset: NAME' plus keys to replace")
    p.add_argument("--out", help="results folder (default: runs/experiment-<name>)")
    p.add_argument("--seeds", type=int, help="evaluation seeds (default: the preset's, >= 3)")
    p.add_argument("--eps", help="comma-separated eps values, e.g. 0.5,1,2,5,10,100")
    p.add_argument("--data-root", help="directory of the MNIST / CIFAR-10 files")
    p.add_argument("--device", help="cpu, cuda or auto (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: the preset's)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar (shown only when stderr is a terminal)")
    p.set_defaults(handler=run_experiment_command)
