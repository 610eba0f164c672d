// Philox4x32-10 counter-based generator and the Box-Muller transform used by the noisy step.
//
// Who uses what (and so what is shared):
//   * the CUDA kernels (cuda/noisy_step_kernels.cu) call gaussian_pair below: these rounds and
//     this box_muller (device log and sincospi);
//   * the CPU noise path (noisy_step_cpu.cpp) shares only the constants and the counter/key
//     layout below: it runs its own structure-of-arrays copy of the rounds (philox_rounds_soa,
//     vectorized) and its own polynomial log/sin/cos, so CPU and CUDA noise agree to double
//     rounding, not bit for bit;
//   * the tests compile this header alone (tests/kernel/test_philox.py).
// Both copies of the rounds are checked against Random123's tests/kat_vectors (Philox4x32-10:
// counter 0 / key 0, counter all-ones / key all-ones, counter and key pi digits; and the
// 7-round pi-digits line): this one by that compiled program, the CPU one through the
// _philox4x32_raw op. No torch headers: this file must compile under plain nvcc.
//
// Generator: Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC'11).
//
// Counter layout (also in docs/kernel.md and tests/kernel/reference.py): a draw at counter
// `offset` with 64-bit `seed` uses key (seed mod 2^32, seed >> 32). Normal number i of the draw
// comes from counter block offset + i / 2 = (lo32, hi32, 0, 0). A block's four output words
// w0..w3 give two 53-bit integers a = ((w0 << 21) ^ (w1 >> 11)) mod 2^53 and
// b = ((w2 << 21) ^ (w3 >> 11)) mod 2^53, u1 = (a + 1) 2^-53 in (0, 1], u2 = b 2^-53 in [0, 1), and
//   z[2k] = sqrt(-2 ln u1) cos(2 pi u2),   z[2k+1] = sqrt(-2 ln u1) sin(2 pi u2),
// evaluated in double. The 53-bit u1 keeps the tail exact out to |z| = 8.57 (mass ~1e-17 beyond).
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define CERTUNLEARN_HD __host__ __device__ __forceinline__
#else
#define CERTUNLEARN_HD inline
#endif

namespace certunlearn {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t v[4];
};

CERTUNLEARN_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *lo = a * b;
  *hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *lo = static_cast<uint32_t>(p);
  *hi = static_cast<uint32_t>(p >> 32);
#endif
}

// Philox4x32-R block function on counter c with key (k0, k1).
template <int Rounds = 10>
CERTUNLEARN_HD Philox4 philox4x32(Philox4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int r = 0; r < Rounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxM0, c.v[0], &hi0, &lo0);
    philox_mulhilo(kPhiloxM1, c.v[2], &hi1, &lo1);
    Philox4 n;
    n.v[0] = hi1 ^ c.v[1] ^ k0;
    n.v[1] = lo1;
    n.v[2] = hi0 ^ c.v[3] ^ k1;
    n.v[3] = lo0;
    c = n;
  }
  return c;
}

// Box-Muller on the four output words of one block: two standard normals (layout above).
CERTUNLEARN_HD void box_muller(const Philox4& w, double* z0, double* z1) {
  constexpr uint64_t kMask53 = (uint64_t{1} << 53) - 1;
  const uint64_t a = ((static_cast<uint64_t>(w.v[0]) << 21) ^ (w.v[1] >> 11)) & kMask53;
  const uint64_t b = ((static_cast<uint64_t>(w.v[2]) << 21) ^ (w.v[3] >> 11)) & kMask53;
  const double u1 = static_cast<double>(a + 1) * 0x1p-53;
  const double u2 = static_cast<double>(b) * 0x1p-53;
#if defined(__CUDA_ARCH__)
  const double r = sqrt(-2.0 * log(u1));
  double s, co;
  sincospi(2.0 * u2, &s, &co);
#else
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 6.283185307179586476925286766559 * u2;
  const double s = std::sin(theta);
  const double co = std::cos(theta);
#endif
  *z0 = r * co;
  *z1 = r * s;
}

// The two standard normals of counter block `block` under `seed` (layout above).
CERTUNLEARN_HD void gaussian_pair(uint64_t seed, uint64_t block, double* z0, double* z1) {
  Philox4 c;
  c.v[0] = static_cast<uint32_t>(block);
  c.v[1] = static_cast<uint32_t>(block >> 32);
  c.v[2] = 0u;
  c.v[3] = 0u;
  box_muller(philox4x32<10>(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)),
             z0, z1);
}

}  // namespace certunlearn
