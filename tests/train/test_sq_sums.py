"""The squared norms of formed per-sample gradients are upper bounds of the exact ones.

``row_sq_sums`` sums float32 squares in float32 over runs of 1024 numbers and rounds the result
up by the bound of that order. The exact value is known here independently: the square of a
float32 is exact in float64 (48 significant bits) and ``math.fsum`` adds them correctly
rounded, so ``fsum * (1 + 2^-52)`` is at least the exact sum.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certunlearn_train.grad import _types
from tests.hypothesis_budget import examples


def exact_upper(row: np.ndarray) -> float:
    return math.fsum(float(v) * float(v) for v in row.astype(np.float64)) * (1 + 2.0 ** -52)


def exact_lower(row: np.ndarray) -> float:
    return math.fsum(float(v) * float(v) for v in row.astype(np.float64)) * (1 - 2.0 ** -52)


magnitudes = st.sampled_from([1e-30, 1e-20, 1e-3, 1.0, 1e3, 1e15])


@st.composite
def rows(draw):
    b = draw(st.integers(1, 4))
    n = draw(st.sampled_from([1, 5, 63, 64, 65, 200, 1023, 1024, 1025, 3000]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "spread", "one big"]))
    scale = draw(magnitudes)
    if kind == "normal":
        x = rng.standard_normal((b, n)) * scale
    elif kind == "spread":   # magnitudes over 40 orders, so float32 sums lose small terms
        x = rng.standard_normal((b, n)) * 10.0 ** rng.uniform(-20, 20, (b, n))
    else:                    # one large number then many small ones (the worst order)
        x = np.full((b, n), scale * 1e-4)
        x[:, 0] = scale
    return torch.tensor(x, dtype=torch.float32)


@settings(max_examples=examples(60), deadline=None)
@given(rows(), st.booleans())
def test_row_sq_sums_never_below_the_exact_sum_and_within_its_margin(x, transposed):
    if transposed and x.shape[0] > 1:  # a non-contiguous input gives the same bound
        x = x.t().contiguous().t()
    margin = torch.zeros(x.shape[0], dtype=torch.float64)
    got = _types.row_sq_sums(x, margin)
    assert got.dtype == torch.float64 and got.shape == (x.shape[0],)
    for i, row in enumerate(x.numpy()):
        hi, lo = exact_upper(row), exact_lower(row)
        assert float(got[i]) >= hi
        assert float(got[i]) - lo <= float(margin[i]) + 2.0 ** -51 * hi
        assert float(margin[i]) <= 5e-4 * hi + 1e-30   # the bound is tight, not a fudge


def test_row_sq_sums_float64_rows_are_summed_in_float64():
    x = torch.randn(3, 500, dtype=torch.float64)
    got = _types.row_sq_sums(x)
    torch.testing.assert_close(got, x.square().sum(1), rtol=1e-12, atol=0)


def test_outer_with_one_position_is_bounded_like_its_formed_gradient():
    # G_i = l_i^T r_i: ||G_i||^2 = ||l_i||^2 ||r_i||^2; both factors are rounded up
    torch.manual_seed(0)
    left, right = torch.randn(5, 2, 1, 300), torch.randn(5, 2, 1, 70)
    margin = torch.zeros(5, dtype=torch.float64)
    got = _types.sq_norms(_types.Outer(left, right), margin)
    formed = torch.matmul(left.double().transpose(2, 3), right.double())
    want = formed.reshape(5, -1).square().sum(1)
    assert bool((got >= want * (1 - 1e-12)).all())
    assert bool((got - want <= margin + 1e-9 * want).all())


def test_gram_norms_are_bounded_and_their_margin_covers_the_excess():
    # the Gram route's computed sum may itself sit up to its bound above the exact value
    torch.manual_seed(0)
    worst = 0.0
    for _ in range(20):
        left, right = torch.randn(7, 2, 3, 40), torch.randn(7, 2, 3, 50)
        rep = _types.Outer(left, right)
        assert _types._gram_is_cheaper(rep)
        margin = torch.zeros(7, dtype=torch.float64)
        got = _types.sq_norms(rep, margin)
        formed = torch.matmul(left.double().transpose(2, 3), right.double())
        want = formed.reshape(7, -1).square().sum(1)
        assert bool((got >= want * (1 - 1e-12)).all())
        assert bool((got - want <= margin * (1 + 1e-9)).all())
        worst = max(worst, float(((got - want) / margin).max()))
    assert worst > 0.5   # the margin is not vacuous


def test_one_position_margin_covers_underflowed_factors():
    left = torch.zeros(1, 1, 1, 8)
    right = torch.full((1, 1, 1, 8), 1e18)
    margin = torch.zeros(1, dtype=torch.float64)
    got = _types.sq_norms(_types.Outer(left, right), margin)
    assert float(got[0]) >= 0.0 and float(got[0]) <= float(margin[0])


def test_narrow_floats_are_summed_exactly_in_float64():
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.full((2, 4096), 0.01, dtype=dtype)
        got = _types.row_sq_sums(x)
        exact = float(x[0].double().square().sum())
        assert float(got[0]) >= exact and float(got[0]) <= exact * (1 + 1e-9)


def test_reduced_precision_products_widen_the_gram_bound_or_refuse():
    torch.manual_seed(0)
    left, right = torch.randn(4, 1, 3, 40), torch.randn(4, 1, 3, 50)
    want = torch.matmul(left.double().transpose(2, 3), right.double()).reshape(4, -1) \
        .square().sum(1)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        got = _types.sq_norms(_types.Outer(left, right))
        assert bool((got >= want).all())
        wide = _types.Outer(torch.randn(2, 1, 3, 400), torch.randn(2, 1, 3, 500))
        with pytest.raises(_types.NotCovered, match="too loose"):
            _types.sq_norms(wide)
    finally:
        torch.set_float32_matmul_precision(before)


def test_embedding_rows_whose_values_cancel_are_not_under_estimated():
    # id 0 three times in one sample: 2^24 + 1 - 2^24 is 0 in float32 and 1 exactly
    index = torch.tensor([[0, 0, 0], [1, 2, 1]])
    values = torch.tensor([[[2.0 ** 24], [1.0], [-(2.0 ** 24)]], [[3.0], [4.0], [-1.0]]])
    margin = torch.zeros(2, dtype=torch.float64)
    got = _types.sq_norms(_types.Rows(index, values, 3), margin)
    assert float(got[0]) >= 1.0 and float(got[0]) - 1.0 <= float(margin[0])
    assert float(got[1]) >= 4.0 + 16.0 and abs(float(got[1]) - 20.0) < 1e-9


@settings(max_examples=examples(40), deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 5), st.integers(0, 2 ** 31 - 1))
def test_embedding_row_norms_bound_the_exact_ones(b, t, vocab, seed):
    rng = np.random.default_rng(seed)
    index = torch.tensor(rng.integers(0, vocab, (b, t)))
    values = torch.tensor(rng.standard_normal((b, t, 3)) * 10.0 ** rng.uniform(-8, 8, (b, t, 1)),
                          dtype=torch.float32)
    margin = torch.zeros(b, dtype=torch.float64)
    got = _types.sq_norms(_types.Rows(index, values, vocab), margin)
    for i in range(b):
        exact = 0.0
        for k in set(index[i].tolist()):
            cols = [math.fsum(float(values[i, p, c]) for p in range(t) if int(index[i, p]) == k)
                    for c in range(3)]
            exact += math.fsum(v * v for v in cols)
        assert float(got[i]) >= exact * (1 - 1e-15)
        assert float(got[i]) - exact <= float(margin[i]) + 1e-12 * exact
