"""Baselines: retraining (exact), output perturbation, DP-SGD with group privacy."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import certunlearn_theory as ct
from certunlearn_train import baselines as B
from certunlearn_train import certificates as C
from certunlearn_train.ops import gaussian_noise

from .helpers import flat_params, tiny_problem


def test_retrain_is_exact_and_fresh():
    model, x, y = tiny_problem()
    before = C.weights_sha256(model)
    out, cert = B.retrain(model, (x, y), epochs=1, lr=0.1, seed=3, forget_size=4, progress=False)
    assert C.weights_sha256(model) == before
    assert cert.method == "retrain" and cert.epsilon == 0 and cert.delta == 0
    with pytest.raises(C.NotVerifiableError):  # exact retraining cannot be shown
        cert.verify(out)
    assert cert.verify(out, allow_unverifiable=True).model_checked
    # a re-initialised model does not start from the trained weights
    again = B.reinitialize_(copy.deepcopy(model), seed=3)
    assert not torch.equal(flat_params(again), flat_params(model))
    with pytest.raises(ValueError, match="no reset_parameters"):
        class Odd(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(2))
        B.reinitialize_(Odd())


def test_output_perturbation_noise_scale_and_certificate():
    model, x, y = tiny_problem()
    C0 = 0.5
    out, cert = B.output_perturbation(model, (x, y), eps=1.0, delta=1e-5, C0=C0, seed=9,
                                      progress=False)
    slack = 2.0 ** -19 * C0  # float32 rounding of the clip (THEORY.md section 8.1)
    sigma = float(ct.noise_for(1.0, 1e-5, 0, C0, None, None, method="output_perturbation",
                               shift_slack=slack))
    assert cert.sigma == sigma and cert.parameters["shift_slack"] == slack
    flat = flat_params(model).double()
    clipped = flat * min(1.0, C0 / float(flat.norm()))
    z = gaussian_noise(flat.numel(), 9, 0, dtype=torch.float64)
    torch.testing.assert_close(flat_params(out).double(), clipped + sigma * z, rtol=0, atol=1e-6)
    # sigma is the analytic Gaussian calibration: theta_eps((2 C0 + slack) / sigma) <= delta,
    # and tight
    r = (2 * C0 + slack) / sigma
    theta = stats.norm.cdf(r / 2 - 1 / r) - math.e * stats.norm.cdf(-1 / r - r / 2)
    # float64 scipy loses ~1e-14 relative to cancellation here; the accountant works in mpmath
    assert theta <= 1e-5 * (1 + 1e-9) and theta > 0.9e-5
    cert.verify(out)


def test_poisson_batches_have_binomial_sizes_and_uniform_inclusion():
    g = torch.Generator().manual_seed(0)
    n, q, reps = 200, 0.1, 2000
    counts = np.zeros(n)
    sizes = []
    for _ in range(reps):
        idx = B.poisson_batch(n, q, g).numpy()
        counts[idx] += 1
        sizes.append(len(idx))
    sizes = np.array(sizes)
    # batch size ~ Binomial(n, q): mean within 4 standard errors, variance n q (1 - q) within 10%
    assert abs(sizes.mean() - n * q) < 4 * math.sqrt(n * q * (1 - q) / reps)
    assert abs(sizes.var() / (n * q * (1 - q)) - 1) < 0.1
    # each point's inclusion count ~ Binomial(reps, q): chi-square goodness of fit of the counts
    p = stats.chisquare(counts).pvalue
    assert p > 1e-3


def test_dpsgd_full_batch_step_matches_reference_and_certificate():
    model, x, y = tiny_problem(n=16)
    lr, clip, k = 0.5, 0.2, 2
    out, cert = B.dpsgd_train(model, (x, y), eps=8.0, delta=1e-5, group_size=k, epochs=1,
                              lr=lr, clip=clip, expected_batch_size=16, seed=4, progress=False)
    # q = 1: the one batch is the whole set; x <- x - lr/n sum clip(g_i) + lr/n z C N(0, I),
    # from the architecture re-initialised with the seed (never from the weights given)
    model = B.reinitialize_(copy.deepcopy(model), seed=4)
    z = cert.parameters["noise_multiplier"]
    assert cert.parameters["steps"] == 1 and cert.parameters["sampling_rate"] == 1.0
    rows = []
    for i in range(16):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]),
                                list(model.parameters()))
        r = torch.cat([t.reshape(-1) for t in g]).double()
        rows.append(r * min(1.0, clip / float(r.norm())))
    noise = gaussian_noise(rows[0].numel(), 4, 0, dtype=torch.float64)
    # the op adds +noise_std * z (the sign of a symmetric noise is a convention)
    expected = flat_params(model).double() - lr / 16 * (torch.stack(rows).sum(0) - z * clip * noise)
    torch.testing.assert_close(flat_params(out).double(), expected, rtol=1e-5, atol=1e-5)
    assert float(ct.dpsgd_epsilon(z, 1.0, 1, 1e-5, group_size=k)) <= 8.0
    assert cert.forget_size == k
    cert.verify(out)


def test_dpsgd_bad_input():
    model, x, y = tiny_problem()
    kw = dict(eps=1.0, delta=1e-5, group_size=1, epochs=1, lr=0.1, clip=1.0, progress=False)
    with pytest.raises(ValueError, match="expected_batch_size must be <= the 24"):
        B.dpsgd_train(model, (x, y), expected_batch_size=100, **kw)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        B.dpsgd_train(model, (x, y), **dict(kw, group_size=0))
    bad = y.clone()
    bad[-1] = -1
    before = C.weights_sha256(model)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*found -1"):
        B.dpsgd_train(model, (x, bad), expected_batch_size=8, inplace=True, **kw)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        B.output_perturbation(model, (x, bad), eps=1.0, delta=1e-5, C0=1.0, finetune_epochs=1,
                              finetune_lr=0.1, inplace=True, progress=False)
    assert C.weights_sha256(model) == before
