"""Every route GradientSource can take gives the clipped mean of the true per-sample gradients.

The reference (``routes_helpers.explicit_clipped_mean``) loops over the samples in float64 with
plain autograd, so a shared weight's per-sample gradient is the sum over its uses. The routes:
the (B, d) rows of per-sample gradients (clipped here, as the fused op does), the chunked clipped
mean (one chunk and chunks of two samples), the ghost-norm route (``certunlearn_train.grad``)
where it applies (and its fallback where it does not), and, without clipping, the plain
mini-batch gradient.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from certunlearn_train._flat import FlatParameters, GradientSource

from ..hypothesis_budget import examples
from .routes_helpers import (
    architectures,
    build_case,
    explicit_clipped_mean,
    explicit_per_sample_gradients,
    norm_quantiles,
)


def _clip_rows_mean(rows: torch.Tensor, C1: float) -> torch.Tensor:
    rows = rows.double()
    if math.isinf(C1):
        return rows.mean(0)
    norms = rows.norm(dim=1)
    return (rows * torch.clamp(C1 / norms.clamp_min(1e-300), max=1.0)[:, None]).mean(0)


def route_outputs(case, C1):
    """{route name: (d,) float64 result} for every route GradientSource can take on ``case``,
    and whether the ghost-norm route was actually used."""
    out = {}
    used_linear = False
    configs = {
        "rows": dict(clip="per_sample", grad_buffer_bytes=1 << 30, ghost_norms=False),
        "chunked": dict(clip="per_sample", grad_buffer_bytes=0, ghost_norms=False),
        "chunked_by_2": dict(clip="per_sample", grad_buffer_bytes=0, ghost_norms=False),
        "linear_or_fallback": dict(clip="per_sample", grad_buffer_bytes=0,
                                   ghost_norms=True),
    }
    for name, cfg in configs.items():
        model = copy.deepcopy(case.model)
        flat = FlatParameters(model)
        try:
            src = GradientSource(model, flat, cfg["clip"], C1, case.loss_fn, len(case.x),
                                 cfg["grad_buffer_bytes"], cfg["ghost_norms"])
            if name == "chunked_by_2":
                src.per_sample.chunk = 2
            got = src(case.x, case.y).clone()
            if name == "linear_or_fallback":
                used_linear = src.ghost is not None
        finally:
            flat.release()
        out[name] = _clip_rows_mean(got, C1) if got.shape[0] > 1 or name == "rows" \
            else got[0].double()
    return out, used_linear


@settings(max_examples=examples(30))
@given(case=architectures(), frac=st.floats(0.3, 1.5))
def test_every_route_equals_the_explicit_per_sample_loop(case, frac):
    norms = norm_quantiles(case.model, case.x, case.y, case.loss_fn)
    C1 = float(frac * norms[len(norms) // 2]) or 1.0  # clips some samples and not others
    expected = explicit_clipped_mean(case.model, case.x, case.y, case.loss_fn, C1)
    got, _ = route_outputs(case, C1)
    for name, vec in got.items():
        torch.testing.assert_close(vec, expected, rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"route {name}: {m}")


@settings(max_examples=examples(10))
@given(case=architectures(kinds=("linear_stack", "tied", "called_twice", "weight_reused"),
                          losses=("cross_entropy",)))
def test_unclipped_routes_and_batch_gradient_equal_the_mean_gradient(case):
    expected = explicit_clipped_mean(case.model, case.x, case.y, case.loss_fn, math.inf)
    got, _ = route_outputs(case, math.inf)
    model = copy.deepcopy(case.model)
    flat = FlatParameters(model)
    try:
        got["batch"] = GradientSource(model, flat, "batch", math.inf, case.loss_fn,
                                      len(case.x))(case.x, case.y)[0].double().clone()
    finally:
        flat.release()
    for name, vec in got.items():
        torch.testing.assert_close(vec, expected, rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"route {name}: {m}")


@pytest.mark.parametrize("kind, linear", [
    ("linear_stack", True),     # the ghost route is exercised, not merely allowed
    ("tied", True),             # one weight owned by two modules: cross terms in the norm
    ("called_twice", True),     # one module called twice: likewise
    ("weight_reused", False),   # a Linear's weight also used outside the module: fallback
    ("conv", True),
    ("conv_wide", True),
    ("embedding", True),
])
def test_ghost_norms_only_where_it_is_exact(kind, linear):
    case = build_case(kind, "cross_entropy", batch=6, width=5, depth=2, seed=3)
    C1 = float(norm_quantiles(case.model, case.x, case.y, case.loss_fn)[3])
    expected = explicit_clipped_mean(case.model, case.x, case.y, case.loss_fn, C1)
    got, used = route_outputs(case, C1)
    assert used == linear
    torch.testing.assert_close(got["linear_or_fallback"], expected, rtol=1e-9, atol=1e-12)


def test_tied_linear_regression():
    """Two nn.Linear sharing one weight used to take the old nn.Linear fast path, which wrote
    each use's gradient into the same slot (the second overwrote the first) and computed the
    norms as if the uses were separate parameters: relative error 0.1-0.3 in float32. The ghost
    route combines the uses of the weight (cross terms included)."""
    case = build_case("tied", "cross_entropy", batch=8, width=6, seed=0, dtype=torch.float32)
    C1 = float(norm_quantiles(case.model, case.x, case.y, case.loss_fn)[4])
    expected = explicit_clipped_mean(case.model, case.x, case.y, case.loss_fn, C1)
    got, used = route_outputs(case, C1)
    assert used
    err = float((got["linear_or_fallback"] - expected).norm() / expected.norm())
    assert err < 1e-5


def test_reference_sums_a_shared_weight_over_its_uses():
    """The reference itself: for y = W (W x) with a shared W, dL/dW is the sum of both uses."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3, bias=False).double()
    model = torch.nn.Sequential(lin, lin)
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    row = explicit_per_sample_gradients(model, x, y, F.mse_loss)[0]
    W = lin.weight.detach()
    h = x[0] @ W.t()
    out = h @ W.t()
    g_out = 2 * (out - y[0]) / 3
    expected = torch.outer(g_out, h) + torch.outer(W.t() @ g_out, x[0])
    torch.testing.assert_close(row, expected.reshape(-1))


def test_linear_layer_whose_output_is_unused():
    class Dead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 3)
            self.unused = torch.nn.Linear(4, 3)

        def forward(self, x):
            self.unused(x)
            return self.a(x)

    torch.manual_seed(0)
    model = Dead().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    expected = explicit_clipped_mean(model, x, y, F.cross_entropy, 0.5)
    flat = FlatParameters(model)
    try:
        src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 5, 0)
        got = src(x, y)[0].double().clone()
        assert src.route == "ghost"  # the unused layer gets a zero gradient, no fallback needed
    finally:
        flat.release()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
