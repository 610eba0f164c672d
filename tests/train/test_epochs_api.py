"""Epochs are whole passes; epoch_callback sees every pass without changing the run; separate
batch sizes for the noisy phase and fine-tuning."""
import copy

import pytest
import torch

from certunlearn_train import baselines as B
from certunlearn_train.train import steps_for_epochs, train
from certunlearn_train.unlearn import unlearn

from .helpers import flat_params

KW = dict(eps=1.0, delta=1e-5, C0=0.5, C1=0.05, lr=0.1, progress=False)


def _dropout_problem(n=30, seed=0):
    """An MLP with dropout (so a callback that draws random numbers could change the run)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(8, 10))
    return model, torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class _CountSteps:
    """Counts forward calls with gradients on (the data check runs without)."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if torch.is_grad_enabled():
            self.n += 1


@pytest.mark.parametrize("epochs, n, batch, expected", [
    (40, 1294, 64, 40 * 21),       # was ceil(40 * 1294 / 64) = 809, about 38.5 passes
    (3, 130, 64, 9),               # 64 + 64 + 2 per pass
    (2.5, 130, 64, 6 + 2),         # half a pass of 3 batches: the first 2
    (0.1, 130, 64, 1),
    (0, 130, 64, 0),
    (1, 5, 8, 1),
])
def test_steps_for_epochs(epochs, n, batch, expected):
    assert steps_for_epochs(epochs, n, batch) == expected


def test_train_runs_whole_passes_and_calls_back_once_per_pass():
    model, x, y = _dropout_problem(n=30)
    counter = _CountSteps(model)
    seen = []
    train(model, (x, y), epochs=3, lr=0.1, batch_size=8, seed=1, progress=False,
          epoch_callback=lambda i, m: seen.append((i, counter.n)))
    # 30 points in batches of 8: 4 steps per pass (8, 8, 8, 6), the callback after each pass
    assert counter.n == 12 and seen == [(0, 4), (1, 8), (2, 12)]
    counter.n = 0
    seen = []
    train(model, (x, y), epochs=1.5, lr=0.1, batch_size=8, seed=1, progress=False,
          epoch_callback=lambda i, m: seen.append(i))
    assert counter.n == 6 and seen == [0]  # the half pass has no callback


def _evaluating_callback(log):
    def cb(i, model):
        model.eval()  # what an evaluation does; train mode must come back
        torch.rand(100)  # and it may draw random numbers (global RNG)
        with torch.no_grad():
            model(torch.rand(3, 1, 8, 8))
        log.append((i, flat_params(model).clone()))
    return cb


def _runs(kind, callback):
    model, x, y = _dropout_problem()
    if kind == "train":
        torch.manual_seed(5)
        return train(model, (x, y), epochs=3, lr=0.1, batch_size=8, seed=1, progress=False,
                     epoch_callback=callback)
    if kind == "unlearn":
        torch.manual_seed(5)
        return unlearn(model, (x, y), steps=3, batch_size=8, finetune_epochs=3, seed=3,
                       epoch_callback=callback, **KW)[0]
    if kind == "retrain":
        torch.manual_seed(5)
        return B.retrain(model, (x, y), epochs=3, lr=0.1, batch_size=8, seed=3, progress=False,
                         epoch_callback=callback)[0]
    if kind == "output_perturbation":
        torch.manual_seed(5)
        return B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=0.5,
                                     finetune_epochs=3, finetune_lr=0.1, batch_size=8, seed=3,
                                     progress=False, epoch_callback=callback)[0]
    if kind == "dpsgd":
        torch.manual_seed(5)
        return B.dpsgd_train(model, (x, y), eps=8.0, delta=1e-5, group_size=1, epochs=3,
                             lr=0.1, clip=1.0, expected_batch_size=10, seed=3, progress=False,
                             epoch_callback=callback)[0]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["train", "unlearn", "retrain", "output_perturbation", "dpsgd"])
def test_epoch_callback_sees_the_run_without_changing_it(kind):
    log = []
    with_cb = _runs(kind, _evaluating_callback(log))
    without = _runs(kind, None)
    assert torch.equal(flat_params(with_cb), flat_params(without))
    assert [i for i, _ in log] == [0, 1, 2]
    assert torch.equal(log[-1][1], flat_params(with_cb))  # the last pass is the final model
    assert not torch.equal(log[0][1], log[-1][1])         # it saw the model change


def test_finetune_batch_size_is_used_for_fine_tuning_only():
    model, x, y = _dropout_problem()
    torch.manual_seed(5)  # dropout draws from the global RNG in both phases
    base, cert0 = unlearn(model, (x, y), steps=3, batch_size=8, seed=3, **KW)
    manual = train(copy.deepcopy(base), (x, y), epochs=2, lr=0.1, batch_size=4, seed=4,
                   progress=False)
    torch.manual_seed(5)
    out, cert = unlearn(model, (x, y), steps=3, batch_size=8, finetune_epochs=2,
                        finetune_batch_size=4, seed=3, **KW)
    assert torch.equal(flat_params(out), flat_params(manual))
    assert cert.sigma == cert0.sigma and cert.parameters["finetune_batch_size"] == 4
    cert.verify(out)
    with pytest.raises(ValueError, match="finetune_batch_size must be an integer >= 1"):
        unlearn(model, (x, y), steps=3, finetune_batch_size=0, **KW)
    # output perturbation: the same split
    torch.manual_seed(5)
    noisy, _ = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=0.5, seed=3,
                                     progress=False)
    manual = train(copy.deepcopy(noisy), (x, y), epochs=2, lr=0.1, batch_size=4, seed=4,
                   progress=False)
    torch.manual_seed(5)
    out, _ = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=0.5, seed=3,
                                   finetune_epochs=2, finetune_lr=0.1, batch_size=8,
                                   finetune_batch_size=4, progress=False)
    assert torch.equal(flat_params(out), flat_params(manual))


def test_unlearn_epochs_are_whole_passes():
    model, x, y = _dropout_problem(n=30)
    _, cert = unlearn(model, (x, y), epochs=3, batch_size=8, seed=3, **KW)
    assert cert.parameters["steps"] == 12
    _, cert = unlearn(model, (x, y), epochs=0.5, batch_size=8, seed=3, **KW)
    assert cert.parameters["steps"] == 2
