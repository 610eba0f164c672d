"""Philox4x32-10 against the published Random123 known-answer vectors, in both implementations.

Source of the vectors: Random123 (D. E. Shaw Research), file tests/kat_vectors, the three
"philox4x32 10" lines (columns: counter[4], key[2], expected output[4], hex uint32), plus the
"philox4x32 7" line for the pi-digits input, which checks that the round count is honoured.
"""
import math
import os
import shutil
import subprocess

import pytest
import torch

from tests.kernel import reference as R

KAT = [  # (rounds, counter, key, expected)
    (10, (0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    (10, (0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    (10, (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
    (7, (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a)),
]
IDS = ["zeros", "ones", "pi-digits", "pi-digits-7-rounds"]
CSRC = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")


@pytest.mark.parametrize("rounds,counter,key,expected", KAT, ids=IDS)
def test_reference_philox_known_answers(rounds, counter, key, expected):
    words = R.philox4x32(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key,
                         rounds=rounds)
    assert tuple(int(w) for w in words) == expected


def test_reference_philox_vectorized_matches_scalar():
    # The same counters evaluated in one batch and one at a time (no cross-talk between lanes).
    counters = [(k, 3 * k + 1, 0, 7) for k in range(5)]
    batch = R.philox4x32(tuple(torch.tensor([c[i] for c in counters]) for i in range(4)), (9, 11))
    for row, c in enumerate(counters):
        single = R.philox4x32(tuple(torch.tensor([w]) for w in c), (9, 11))
        assert [int(b[row]) for b in batch] == [int(s) for s in single]


CXX_PROGRAM = r"""
#include <cstdio>
#include "philox.h"
using namespace certunlearn;
int main() {
  const unsigned c[4][4] = {{0u,0u,0u,0u},{0xffffffffu,0xffffffffu,0xffffffffu,0xffffffffu},
    {0x243f6a88u,0x85a308d3u,0x13198a2eu,0x03707344u},{0x243f6a88u,0x85a308d3u,0x13198a2eu,0x03707344u}};
  const unsigned k[4][2] = {{0u,0u},{0xffffffffu,0xffffffffu},{0xa4093822u,0x299f31d0u},
    {0xa4093822u,0x299f31d0u}};
  for (int t = 0; t < 4; ++t) {
    Philox4 in; for (int i = 0; i < 4; ++i) in.v[i] = c[t][i];
    Philox4 o = t < 3 ? philox4x32<10>(in, k[t][0], k[t][1]) : philox4x32<7>(in, k[t][0], k[t][1]);
    std::printf("%08x %08x %08x %08x\n", o.v[0], o.v[1], o.v[2], o.v[3]);
  }
  for (unsigned long long b = 0; b < 3; ++b) {
    double z0, z1; gaussian_pair(0xfedcba9876543210ull, (1ull << 40) + b, &z0, &z1);
    std::printf("%.17g %.17g\n", z0, z1);
  }
  const unsigned words[3][4] = {{0u, 0u, 0u, 0u}, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
    {0x00000000u, 0x000007ffu, 0x40000000u, 0u}};
  for (int t = 0; t < 3; ++t) {
    Philox4 w; for (int i = 0; i < 4; ++i) w.v[i] = words[t][i];
    double z0, z1; box_muller(w, &z0, &z1);
    std::printf("%.17g %.17g\n", z0, z1);
  }
  return 0;
}
"""
EXTREME_WORDS = [(0, 0, 0, 0), (0xffffffff,) * 4, (0, 0x7ff, 0x40000000, 0)]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the header alone")
def test_header_philox_known_answers_and_transform(tmp_path):
    """csrc/philox.h compiled on its own (no torch): KAT vectors and the Gaussian transform."""
    src = tmp_path / "kat.cpp"
    src.write_text(CXX_PROGRAM)
    exe = tmp_path / "kat"
    subprocess.run(["g++", "-std=c++17", "-O2", "-I", CSRC, str(src), "-o", str(exe)], check=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    for line, (_, _, _, expected) in zip(lines[:4], KAT):
        assert tuple(int(w, 16) for w in line.split()) == expected
    z = [float(v) for line in lines[4:7] for v in line.split()]
    ref = R.gaussian_noise_reference(6, 0xfedcba9876543210, 1 << 40, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(z, dtype=torch.float64), ref, rtol=1e-14, atol=1e-15)
    extreme = [float(v) for line in lines[7:10] for v in line.split()]
    expected = [float(v) for w in EXTREME_WORDS
                for v in R.box_muller(*(torch.tensor([x], dtype=torch.int64) for x in w))]
    assert extreme == pytest.approx(expected, rel=1e-15, abs=1e-15)


def test_box_muller_extremes():
    """Words chosen to hit the ends of the 53-bit uniforms: the tail reaches sqrt(106 ln 2)."""
    def t(*w):
        return [float(v) for v in R.box_muller(*(torch.tensor([x]) for x in w))]
    # a = 0 -> u1 = 2^-53, the largest radius; b = 0 -> angle 0.
    assert t(0, 0, 0, 0) == pytest.approx([math.sqrt(2 * 53 * math.log(2)), 0.0], rel=1e-15)
    # a = 2^53 - 1 -> u1 = 1 -> radius 0.
    assert max(abs(v) for v in t(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff)) == 0.0
    # a = 0x7ff >> 11 = 0 from w1's low bits only (they are dropped); b = 2^51 -> angle pi/2.
    z0, z1 = t(0, 0x7ff, 0x40000000, 0)
    assert z1 == pytest.approx(math.sqrt(2 * 53 * math.log(2)), rel=1e-15) and abs(z0) < 1e-14


def _raw(counters, key, rounds=10):
    c = torch.tensor(counters, dtype=torch.int64).reshape(-1, 4)
    out = torch.ops.certunlearn._philox4x32_raw(c, int(key[0]), int(key[1]), rounds)
    return [tuple(int(w) for w in row) for row in out]


@pytest.mark.parametrize("rounds,counter,key,expected", KAT, ids=IDS)
def test_vectorized_cpu_philox_known_answers(rounds, counter, key, expected):
    """The structure-of-arrays rounds the CPU noise path runs (csrc/noisy_step_cpu.cpp), on the
    Random123 vectors, alone and as lane 0, 1 and the last lane of a full 256-lane batch with
    other counters around it (no cross-talk between lanes), and past one batch (lane 256)."""
    assert _raw([counter], key, rounds) == [expected]
    filler = [((3 * k) & 0xffffffff, k, 7 * k, 0) for k in range(300)]
    for lane in (0, 1, 255, 256):
        batch = filler[:lane] + [counter] + filler[lane + 1:]
        out = _raw(batch, key, rounds)
        assert out[lane] == expected
        # the filler lanes agree with the pure-PyTorch reference (independent implementation)
        ref = R.philox4x32(tuple(torch.tensor([c[i] for c in batch]) for i in range(4)), key,
                           rounds=rounds)
        assert out == [tuple(int(w[j]) for w in ref) for j in range(len(batch))]


def test_cpu_noise_first_values_from_the_zero_vector():
    """gaussian_noise(seed=0, offset=0) starts with counter block 0 under key 0: the Box-Muller
    pair of the all-zero known-answer vector, computed here with Python's math (libm)."""
    w0, w1, w2, w3 = KAT[0][3]
    a = ((w0 << 21) ^ (w1 >> 11)) & ((1 << 53) - 1)
    b = ((w2 << 21) ^ (w3 >> 11)) & ((1 << 53) - 1)
    r = math.sqrt(-2.0 * math.log((a + 1) * 2.0 ** -53))
    theta = 2.0 * math.pi * b * 2.0 ** -53
    from certunlearn_train import ops
    z = ops.gaussian_noise(2, 0, 0, dtype=torch.float64).tolist()
    assert z == pytest.approx([r * math.cos(theta), r * math.sin(theta)], rel=1e-14, abs=1e-15)


def test_raw_philox_op_refuses_bad_words():
    with pytest.raises(ValueError, match=r"\[0, 2\^32\)"):
        _raw([(0, 0, 0, 2 ** 32)], (0, 0))
    with pytest.raises(ValueError, match="key"):
        _raw([(0, 0, 0, 0)], (2 ** 32, 0))
