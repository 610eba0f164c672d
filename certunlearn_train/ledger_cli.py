"""How the ``unlearn`` command serves a request on a ledger: find the ledger of the run that
produced the model file, draw the forget set among the points not forgotten yet."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from .cli_common import FileProblem
from .ledger import LEDGER_FILE, Ledger, LedgerError, Request, ledger_path_for

__all__ = ["LEDGER_FILE", "ledger_path_for", "source_ledger", "next_request"]

_FORGET_KEYS = ("forget_fraction", "forget_classes", "forget_indices_file")


def source_ledger(model_file: str, arch: Mapping[str, Any], model, train_size: int,
                  dataset: Dict[str, Any]) -> Ledger:
    """The ledger this request continues: the one beside ``model_file`` when that model is the
    output of an earlier request, else a new one for ``train_size`` points.

    Raises:
        FileProblem: the model is an earlier request's output but its ledger is missing, does
            not match the model file, or belongs to another training set; or the model is an
            unlearning output from before ledgers existed (a request served on it would train
            on the points it forgot again).
    """
    from .certificates import weights_sha256
    path = ledger_path_for(model_file, arch)
    data = arch.get("data") or {}
    if path is None:
        if any(data.get(k) is not None for k in _FORGET_KEYS):
            raise FileProblem(
                f"{model_file} is the output of an unlearning run that kept no ledger of the "
                f"points it forgot, so a request served on it would train on them again; serve "
                f"the request from the original model, or redo the first request with this "
                f"version")
        return Ledger.new(train_size, dataset)
    try:
        ledger = Ledger.load(path)
    except LedgerError as exc:
        raise FileProblem(f"{exc} (the ledger of the run that produced {model_file} is needed "
                          f"to keep every point forgotten so far out of this request's retain "
                          f"set)") from None
    rec = arch["ledger"]
    if ledger.head() != rec.get("head") or not ledger.requests:
        raise FileProblem(f"{path} does not match {model_file} (edited or replaced after the "
                          f"run): its last request is not the one that produced the model")
    if ledger.requests[-1]["model_sha256_after"] != weights_sha256(model):
        raise FileProblem(f"{path}: its last request produced another model than {model_file}")
    if ledger.train_size != train_size:
        raise FileProblem(f"{path} is a ledger of {ledger.train_size} training points, but the "
                          f"data set has {train_size}: use the data set of the first request")
    return ledger


def next_request(ledger: Ledger, train_set, fraction: Optional[float], classes,
                 seed: Optional[int], indices_file: Optional[str]) -> Request:
    """The next request: indices from a file (into the whole training set), or a seeded
    ``fraction`` or whole ``classes`` drawn among the points not forgotten yet."""
    from .data import load_forget_indices, select_forget
    if indices_file is not None:
        idx = load_forget_indices(indices_file, len(train_set))
    else:
        remaining = ledger.remaining()
        idx = remaining[select_forget(train_set.y[remaining], fraction=fraction,
                                      classes=classes, seed=seed)]
    return ledger.request(idx)
