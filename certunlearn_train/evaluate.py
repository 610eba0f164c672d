"""Evaluation: accuracy and a loss-threshold membership-inference audit.

The audit scores each sample by its negative loss (training members tend to have lower loss) and
reports the ROC AUC of telling forget-set samples apart from held-out test samples (Yeom et al.
2018, "Privacy risk in machine learning", the loss-threshold attack). 0.5 means the forget set
looks like data the model never saw; a model trained on the forget set typically scores above 0.5.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["per_sample_losses", "accuracy", "mia_auc", "evaluate_model", "auc"]


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outs = [model(x[i:i + batch_size].to(device)).float().cpu()
                for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def per_sample_losses(model: nn.Module, x, y, loss_fn: Optional[Callable] = None) -> np.ndarray:
    """Loss of every sample (float64 numpy array): cross-entropy by default, else
    ``loss_fn(outputs[i:i+1], y[i:i+1])`` for each sample i, in float64."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    outputs = _predict(model, x).double()
    if loss_fn is None or loss_fn is F.cross_entropy:
        return F.cross_entropy(outputs, y.long(), reduction="none").numpy()
    y = y.double() if y.is_floating_point() else y.long()
    return np.array([float(loss_fn(outputs[i:i + 1], y[i:i + 1])) for i in range(len(y))],
                    dtype=np.float64)


def accuracy(model: nn.Module, x, y) -> float:
    """Fraction of samples whose arg-max prediction equals the label (nan for an empty set)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(y) == 0:
        return float("nan")
    return float((_predict(model, x).argmax(1) == y).double().mean())


def auc(positive_scores, negative_scores) -> float:
    """ROC AUC = P(score of a positive > score of a negative) + P(tie)/2 (Mann-Whitney U / (n m))."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"auc needs non-empty score sets, got {pos.size} and {neg.size}")
    from scipy.stats import rankdata
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def mia_auc(model: nn.Module, member_x, member_y, nonmember_x, nonmember_y,
            loss_fn: Optional[Callable] = None) -> float:
    """AUC of the loss-threshold attack separating members (forget set) from non-members (test)."""
    return auc(-per_sample_losses(model, member_x, member_y, loss_fn),
               -per_sample_losses(model, nonmember_x, nonmember_y, loss_fn))


def evaluate_model(model: nn.Module, *, retain=None, forget=None, test=None,
                   loss_fn: Optional[Callable] = None) -> Dict[str, float]:
    """Accuracies on the given (x, y) pairs, and the forget-vs-test MIA AUC when both are given.

    With a ``loss_fn`` (the training loss) the mean loss of each pair is reported too
    (``retain_loss``, ...) and the MIA scores use it; accuracies are reported only for integer
    (class-label) targets.
    """
    out: Dict[str, float] = {}
    for name, pair in (("retain", retain), ("forget", forget), ("test", test)):
        if pair is not None:
            x, y = pair
            if not torch.as_tensor(y).is_floating_point():
                out[f"{name}_acc"] = accuracy(model, x, y)
            if loss_fn is not None:
                out[f"{name}_loss"] = float(np.mean(per_sample_losses(model, x, y, loss_fn)))
    if forget is not None and test is not None:
        (forget_x, forget_y), (test_x, test_y) = forget, test
        out["mia_auc"] = mia_auc(model, forget_x, forget_y, test_x, test_y, loss_fn=loss_fn)
    return out
