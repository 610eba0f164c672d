"""Statistical tests of the op's Gaussian noise (a flawed Gaussian breaks every certificate).

All draws use fixed seeds, so the tests are deterministic; thresholds are set so that a correct
N(0, 1) generator would fail each with probability about 1e-4 or less (5-sigma bands for moments
and correlations, exact binomial tests at alpha = 1e-4 for tail counts, p > 1e-4 for
goodness-of-fit), while the defects they target (a wrong variance, a truncated or light tail,
reused counters, correlated lanes) fail them by a wide margin.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from certunlearn_train import ops
from tests.kernel import reference as R

from .helpers import DEVICES

ALPHA = 1e-4


def draw(n, seed, offset=0, device="cpu"):
    return ops.gaussian_noise(n, seed, offset, device=device, dtype=torch.float64).cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_moments(device):
    n = 4_000_000
    z = draw(n, 0x1234_5678_9ABC_DEF0, 77, device)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)


@pytest.mark.parametrize("device", DEVICES)
def test_tail_frequencies(device):
    """Counts beyond 3..5 sigma (each side) against exact binomial tests."""
    n = 20_000_000
    z = draw(n, 42, 0, device)
    for k in (3.0, 3.5, 4.0, 4.5, 5.0):
        p = stats.norm.sf(k)
        for side, count in (("upper", int((z > k).sum())), ("lower", int((z < -k).sum()))):
            pvalue = stats.binomtest(count, n, p).pvalue
            assert pvalue > ALPHA, (k, side, count, n * p)
    # Nothing beyond the largest radius the 53-bit transform can produce.
    assert np.abs(z).max() <= math.sqrt(2 * 53 * math.log(2))


@pytest.mark.parametrize("device", DEVICES)
def test_goodness_of_fit(device):
    z = draw(1_000_000, 2024, 5, device)
    assert stats.kstest(z, "norm").pvalue > ALPHA
    assert stats.cramervonmises(z[:200_000], "norm").pvalue > ALPHA
    # Chi-square on 200 equiprobable bins.
    edges = stats.norm.ppf(np.linspace(0, 1, 201))
    counts = np.histogram(z, bins=edges)[0]
    assert stats.chisquare(counts).pvalue > ALPHA


def test_box_muller_radius_is_chi_square_2():
    """z[2k]^2 + z[2k+1]^2 ~ Exp(mean 2) exactly, including its far tail (u1 is 53-bit)."""
    z = draw(8_000_000, 99)
    r2 = z[0::2] ** 2 + z[1::2] ** 2
    assert stats.kstest(r2, "expon", args=(0, 2)).pvalue > ALPHA
    m = r2.size
    for t in (10.0, 15.0, 20.0):  # P(r2 > 2t) = e^-t
        count = int((r2 > 2 * t).sum())
        assert stats.binomtest(count, m, math.exp(-t)).pvalue > ALPHA, (t, count, m * math.exp(-t))


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("device", DEVICES)
def test_no_correlation_between_steps_coordinates_and_seeds(device):
    d = 1_000_000
    band = 5 / math.sqrt(d)
    stream = ops.NoiseStream(seed=31337)
    s1, o1 = stream.take(d)
    s2, o2 = stream.take(d)
    assert o2 == o1 + R.blocks_for(d)
    z1, z2 = draw(d, s1, o1, device), draw(d, s2, o2, device)
    assert abs(corr(z1, z2)) < band                        # consecutive steps
    assert abs(corr(z1 ** 2, z2 ** 2)) < band
    half = band * math.sqrt(2)
    assert abs(corr(z1[0::2], z1[1::2])) < half            # the two normals of one block
    assert abs(corr(z1[0::2] ** 2, z1[1::2] ** 2)) < half
    assert abs(corr(z1[1:-1:2], z1[2::2])) < half          # neighbours across blocks
    assert abs(corr(z1[:-2], z1[2:])) < band               # lag 2
    other_seed = draw(d, 31338, o1, device)                # neighbouring seed, same counters
    assert abs(corr(z1, other_seed)) < band


def test_no_correlation_between_philox_lanes():
    """The four 32-bit output words of a block, as uniforms, are pairwise uncorrelated."""
    n = 1_000_000
    block = torch.arange(n, dtype=torch.int64)
    zero = torch.zeros_like(block)
    words = R.philox4x32((block, zero, zero, zero), (0xDEADBEEF, 0x12345678))
    u = [w.double().numpy() / 2 ** 32 for w in words]
    for lane in u:
        assert abs(lane.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    band = 5 / math.sqrt(n)
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs(corr(u[i], u[j])) < band, (i, j)
    # Consecutive counters (what neighbouring coordinates use) are uncorrelated too.
    assert abs(corr(u[0][:-1], u[0][1:])) < band


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("noise_after", [True, False])
def test_op_noise_has_the_requested_std(device, noise_after):
    d = 2_000_000
    sigma = 0.3
    x = torch.zeros(d, device=device)
    G = torch.zeros(1, d, device=device)
    ops.noisy_step_(x, G, lr=1.0, noise_std=sigma, noise_after_projection=noise_after, seed=5,
                    offset=0)
    z = x.double().cpu().numpy() / sigma
    assert abs(z.mean()) < 5 / math.sqrt(d)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / d)
    assert stats.kstest(z[:500_000], "norm").pvalue > ALPHA


@pytest.mark.parametrize("device", DEVICES)
def test_float32_noise_is_the_rounded_float64_noise(device):
    z64 = ops.gaussian_noise(100_001, 3, 10, device=device, dtype=torch.float64)
    z32 = ops.gaussian_noise(100_001, 3, 10, device=device, dtype=torch.float32)
    assert torch.equal(z64.float(), z32)


def test_stream_never_reuses_counters():
    stream = ops.NoiseStream(seed=1)
    spans = [stream.take(n) for n in (1, 2, 3, 10, 0, 7)]
    ends = [o + R.blocks_for(n) for (_, o), n in zip(spans, (1, 2, 3, 10, 0, 7))]
    assert [o for _, o in spans] == [0, 1, 2, 4, 9, 9] and ends[-1] == stream.offset == 13
    assert not ops.NoiseStream().seed_is_user_supplied
    assert ops.NoiseStream(seed=5).seed_is_user_supplied
    with pytest.raises(ValueError, match="seed"):
        ops.NoiseStream(seed=-1)
    with pytest.raises(ValueError, match="numel"):
        stream.take(-1)
    near_end = ops.NoiseStream(seed=1, offset=2 ** 63 - 2)
    near_end.take(4)
    with pytest.raises(ValueError, match="exhausted"):
        near_end.take(1)


def test_entropy_seeds_differ():
    seeds = {ops.NoiseStream().seed for _ in range(64)}
    assert len(seeds) == 64 and max(seeds) >= 2 ** 32  # 64-bit keys, not a clock
