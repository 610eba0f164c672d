// CPU kernels of the noisy step (semantics: docs/kernel.md, reference tests/kernel/reference.py). No torch checks and
// no exceptions here: the checked entry points in noisy_step.cpp turn the outcome of run_step_cpu
// into an error, so no exception ever unwinds through the vectorized, OpenMP-outlined code below.
//
// Passes (all through at::parallel_for, results independent of the thread count):
//   1. row norms (skipped when precomputed), in fixed chunks of each row, accumulated in double;
//   2. per column tile: sum_i c_i G_i over all rows, eight rows at a time, into a double tile
//      that stays in L1, then u (+ noise) is written to a float32 scratch vector and its
//      squared norm accumulated;
//   3. after all checks pass, x = f * scratch (+ noise), f the projection factor.
#include "noisy_step_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "noisy_step.h"
#include "philox.h"

namespace certunlearn {

namespace {

// Hot loops get AVX-512 (x86-64-v4) and AVX2+FMA (x86-64-v3) clones chosen at load time; the
// default clone is plain x86-64. The v4 and v3 clones compute the same values (checked bit for
// bit once on noise, params and norms, on an AVX-512 Xeon): no loop here reassociates
// floating-point sums (no -ffast-math), and both contract to FMA alike. The wider
// lanes pay off mostly in the noise (Philox's 32x32->64-bit products, the double transform):
// 203,530 normals in 0.65 ms instead of 1.03 ms on one thread of an AVX-512 Xeon.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
#define CERTUNLEARN_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CERTUNLEARN_CLONES
#endif

constexpr int64_t kNormChunk = int64_t{1} << 15;  // elements per row-norm task
constexpr int64_t kTile = 1024;                   // columns per update tile (even)
// Bytes of G per row block when the norms are computed here: small enough that the block is
// still in the last-level cache when the update pass reads it again.
const double kRowBlockBytes = [] {
  const char* env = std::getenv("CERTUNLEARN_ROW_BLOCK_MB");
  return (env ? std::atof(env) : 4.0) * 1048576.0;
}();

// sum_j p[j]^2 in double with 8 independent accumulators (vectorizable, fixed order).
CERTUNLEARN_CLONES double sum_squares(const float* __restrict p, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      const double v = p[j + l];
      acc[l] += v * v;
    }
  }
  for (; j < n; ++j) {
    const double v = p[j];
    acc[0] += v * v;
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// acc[j] += c * g[j] for j < n.
CERTUNLEARN_CLONES void accumulate_row(double* __restrict acc, const float* __restrict g, double c,
                                       int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += c * static_cast<double>(g[j]);
}

// acc[j] += sum_k c[k] * g[k * stride + j] for eight rows k, j < n, summed as a fixed tree: one
// load and store of acc per eight rows, and eight sequential read streams instead of one.
CERTUNLEARN_CLONES void accumulate_8_rows(double* __restrict acc, const float* g, int64_t stride,
                                          const double* c, int64_t n) {
  const float* __restrict g0 = g;
  const float* __restrict g1 = g + stride;
  const float* __restrict g2 = g + 2 * stride;
  const float* __restrict g3 = g + 3 * stride;
  const float* __restrict g4 = g + 4 * stride;
  const float* __restrict g5 = g + 5 * stride;
  const float* __restrict g6 = g + 6 * stride;
  const float* __restrict g7 = g + 7 * stride;
  const double c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5], c6 = c[6],
               c7 = c[7];
  for (int64_t j = 0; j < n; ++j) {
    const double a = (c0 * static_cast<double>(g0[j]) + c1 * static_cast<double>(g1[j])) +
                     (c2 * static_cast<double>(g2[j]) + c3 * static_cast<double>(g3[j]));
    const double b = (c4 * static_cast<double>(g4[j]) + c5 * static_cast<double>(g5[j])) +
                     (c6 * static_cast<double>(g6[j]) + c7 * static_cast<double>(g7[j]));
    acc[j] += a + b;
  }
}

// acc[j] += sum_{i0 <= i < i1} c[i] * G[i, j0 + j] for j < n (G has d columns): rows in groups
// of eight from i0, then one by one. The order depends only on (i0, i1), never on threads.
void accumulate_rows(double* acc, const float* G, int64_t d, int64_t j0, const double* c,
                     int64_t i0, int64_t i1, int64_t n) {
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) accumulate_8_rows(acc, G + i * d + j0, d, c + i, n);
  for (; i < i1; ++i) accumulate_row(acc, G + i * d + j0, c[i], n);
}

CERTUNLEARN_CLONES double sum_squares_of_doubles_as_float(const double* __restrict u,
                                                          float* __restrict out, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int l = 0; l < 4; ++l) {
      const float f = static_cast<float>(u[j + l]);
      out[j + l] = f;
      acc[l] += static_cast<double>(f) * static_cast<double>(f);
    }
  }
  for (; j < n; ++j) {
    const float f = static_cast<float>(u[j]);
    out[j] = f;
    acc[0] += static_cast<double>(f) * static_cast<double>(f);
  }
  return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

// ---- Batched, vectorizable Gaussian generation (the CPU's only noise path) ----
//
// What is shared with philox.h: the constants (multipliers, Weyl increments) and the counter and
// key layout. The rounds themselves are a second implementation, philox_rounds_soa below, on
// structure-of-arrays words so the compiler vectorizes the 32x32->64-bit products; they give the
// same output words as philox4x32<10> in philox.h (both are checked against Random123's
// known-answer vectors in tests/kernel/test_philox.py, this one through _philox4x32_raw). The
// transform is not shared either: branch-free polynomial log and sin/cos in double, accurate to
// a few units in the last place of double (far below the float32 rounding of the result), where
// philox.h's box_muller (used by the CUDA kernels) calls the device's log/sincospi: CPU and CUDA
// noise agree to double rounding, not bit for bit. log by the atanh series on
// [sqrt(1/2), sqrt(2)) (|s| <= 0.1716, truncation < 3e-17), sin/cos by Taylor series on
// [-pi/4, pi/4] after an exact quadrant reduction of u2 (truncation < 1e-19).

constexpr int kNoiseBatch = 256;  // counter blocks per batch (512 normals)

// Philox4x32-R on n <= kNoiseBatch counters held as four word arrays, in place.
__attribute__((always_inline)) inline void philox_rounds_soa(
    uint32_t* __restrict c0, uint32_t* __restrict c1, uint32_t* __restrict c2,
    uint32_t* __restrict c3, int n, uint32_t k0, uint32_t k1, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    for (int k = 0; k < n; ++k) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[k];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[k];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[k] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[k] ^ k1;
      c1[k] = static_cast<uint32_t>(p1);
      c3[k] = static_cast<uint32_t>(p0);
      c0[k] = n0;
      c2[k] = n2;
    }
  }
}

CERTUNLEARN_CLONES void philox_soa_batch(const int64_t* in, int n, uint32_t k0, uint32_t k1,
                                         int rounds, int64_t* out) {
  uint32_t c0[kNoiseBatch], c1[kNoiseBatch], c2[kNoiseBatch], c3[kNoiseBatch];
  for (int k = 0; k < n; ++k) {
    c0[k] = static_cast<uint32_t>(in[4 * k]);
    c1[k] = static_cast<uint32_t>(in[4 * k + 1]);
    c2[k] = static_cast<uint32_t>(in[4 * k + 2]);
    c3[k] = static_cast<uint32_t>(in[4 * k + 3]);
  }
  philox_rounds_soa(c0, c1, c2, c3, n, k0, k1, rounds);
  for (int k = 0; k < n; ++k) {
    out[4 * k] = c0[k];
    out[4 * k + 1] = c1[k];
    out[4 * k + 2] = c2[k];
    out[4 * k + 3] = c3[k];
  }
}

inline double bits_to_double(uint64_t v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}
inline uint64_t double_to_bits(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// Exact conversion of 0 <= v <= 2^53 to double using only 64-bit integer and double lane ops.
inline double u53_to_double(uint64_t v) {
  const double hi = bits_to_double((v >> 32) | 0x4330000000000000ull) - 0x1p52;
  const double lo = bits_to_double((v & 0xffffffffull) | 0x4330000000000000ull) - 0x1p52;
  return hi * 0x1p32 + lo;
}

// Natural log of x in [2^-53, 1].
inline double log_unit(double x) {
  const uint64_t bits = double_to_bits(x);
  double e = bits_to_double((bits >> 52) | 0x4330000000000000ull) - (0x1p52 + 1023.0);
  double m = bits_to_double((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  const bool big = m > 1.4142135623730951;
  m = big ? m * 0.5 : m;
  e = big ? e + 1.0 : e;
  const double f = m - 1.0;  // exact
  const double s = f / (2.0 + f);
  const double s2 = s * s;
  double p = 2.0 / 21.0;
  p = p * s2 + 2.0 / 19.0;
  p = p * s2 + 2.0 / 17.0;
  p = p * s2 + 2.0 / 15.0;
  p = p * s2 + 2.0 / 13.0;
  p = p * s2 + 2.0 / 11.0;
  p = p * s2 + 2.0 / 9.0;
  p = p * s2 + 2.0 / 7.0;
  p = p * s2 + 2.0 / 5.0;
  p = p * s2 + 2.0 / 3.0;
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  // log m = 2 atanh(s) = 2 s + s^3 p(s^2)
  return e * ln2_hi + ((s * s2 * p + e * ln2_lo) + 2.0 * s);
}

CERTUNLEARN_CLONES void gaussian_blocks(uint64_t seed, uint64_t first, int n, double* __restrict z) {
  uint32_t c0[kNoiseBatch], c1[kNoiseBatch], c2[kNoiseBatch], c3[kNoiseBatch];
  for (int k = 0; k < n; ++k) {
    const uint64_t b = first + static_cast<uint64_t>(k);
    c0[k] = static_cast<uint32_t>(b);
    c1[k] = static_cast<uint32_t>(b >> 32);
    c2[k] = 0u;
    c3[k] = 0u;
  }
  philox_rounds_soa(c0, c1, c2, c3, n, static_cast<uint32_t>(seed),
                    static_cast<uint32_t>(seed >> 32), 10);
  constexpr uint64_t kMask53 = (uint64_t{1} << 53) - 1;
  for (int k = 0; k < n; ++k) {
    const uint64_t a = ((static_cast<uint64_t>(c0[k]) << 21) ^ (c1[k] >> 11)) & kMask53;
    const uint64_t b = ((static_cast<uint64_t>(c2[k]) << 21) ^ (c3[k] >> 11)) & kMask53;
    const double u1 = u53_to_double(a + 1) * 0x1p-53;
    const double t = u53_to_double(b) * 0x1p-51;             // 4 u2 in [0, 4), exact
    const double shifted = t + 0x1p52;                       // rounds t to the nearest integer
    const uint64_t q = double_to_bits(shifted) & 3u;         // quadrant (4 == 0 mod 4)
    const double phi = (t - (shifted - 0x1p52)) * 1.5707963267948966;  // in [-pi/4, pi/4]
    const double p2 = phi * phi;
    double sp = 1.0 / 355687428096000.0;
    sp = sp * p2 - 1.0 / 1307674368000.0;
    sp = sp * p2 + 1.0 / 6227020800.0;
    sp = sp * p2 - 1.0 / 39916800.0;
    sp = sp * p2 + 1.0 / 362880.0;
    sp = sp * p2 - 1.0 / 5040.0;
    sp = sp * p2 + 1.0 / 120.0;
    sp = sp * p2 - 1.0 / 6.0;
    const double sin_phi = phi + phi * p2 * sp;
    double cp = -1.0 / 6402373705728000.0;
    cp = cp * p2 + 1.0 / 20922789888000.0;
    cp = cp * p2 - 1.0 / 87178291200.0;
    cp = cp * p2 + 1.0 / 479001600.0;
    cp = cp * p2 - 1.0 / 3628800.0;
    cp = cp * p2 + 1.0 / 40320.0;
    cp = cp * p2 - 1.0 / 720.0;
    cp = cp * p2 + 1.0 / 24.0;
    cp = cp * p2 - 0.5;
    const double cos_phi = 1.0 + p2 * cp;
    // angle = q pi/2 + phi: (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c) for q = 0..3.
    const bool odd = (q & 1u) != 0;
    const double c = odd ? sin_phi : cos_phi;
    const double s = odd ? cos_phi : sin_phi;
    const double c_sign = (((q + 1u) & 2u) != 0) ? -1.0 : 1.0;
    const double s_sign = ((q & 2u) != 0) ? -1.0 : 1.0;
    const double radius = std::sqrt(-2.0 * log_unit(u1));
    z[2 * k] = radius * (c_sign * c);
    z[2 * k + 1] = radius * (s_sign * s);
  }
}

// buf[j] += std * z[first + j] for j < n; `first` is even (tiles start at even columns).
void add_noise(double* buf, int64_t first, int64_t n, double std, uint64_t seed, int64_t offset) {
  double z[2 * kNoiseBatch];
  for (int64_t j = 0; j < n; j += 2 * kNoiseBatch) {
    const int64_t m = std::min<int64_t>(2 * kNoiseBatch, n - j);
    gaussian_blocks(seed, static_cast<uint64_t>(offset + (first + j) / 2),
                    static_cast<int>(blocks_for(m)), z);
    for (int64_t k = 0; k < m; ++k) buf[j + k] += std * z[k];
  }
}

bool all_finite(const float* p, int64_t n) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      if (!std::isfinite(p[j])) {
        ok = false;
        return;
      }
    }
  });
  return ok;
}

// Row norms of G (B, d) in double; deterministic (fixed chunks, fixed summation order).
void row_norms_cpu(const float* G, int64_t B, int64_t d, double* out) {
  const int64_t chunks = (d + kNormChunk - 1) / kNormChunk;
  std::vector<double> partial(static_cast<size_t>(B * chunks));
  at::parallel_for(0, B * chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t i = t / chunks, c = t % chunks;
      const int64_t j0 = c * kNormChunk, n = std::min(kNormChunk, d - j0);
      partial[t] = sum_squares(G + i * d + j0, n);
    }
  });
  for (int64_t i = 0; i < B; ++i) {
    double s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[i * chunks + c];
    out[i] = std::sqrt(s);
  }
}

}  // namespace

// The CPU step proper; writes params only when it returns kOk. Kept out of line and free of
// throws so that no exception ever unwinds through its frame (the OpenMP-outlined, vectorized
// code around it); the caller turns the outcome into an error.
StepOutcome run_step_cpu(
    float* xo, const float* G, int64_t B, int64_t d, double* n, bool have_norms, double lr,
    double weight_decay, double clip, double noise_std, double radius, bool noise_after_projection,
    uint64_t seed, int64_t offset, float* tmp) {
  const float* x = xo;
  StepOutcome out;
  std::vector<double> coef(static_cast<size_t>(B));
  const auto set_coef = [&](int64_t i) {
    const double s = n[i] > clip ? clip / n[i] : 1.0;
    coef[i] = s * (lr / static_cast<double>(B));
  };
  const double a = 1.0 - lr * weight_decay;
  const bool noisy = noise_std > 0;
  const int64_t tiles = (d + kTile - 1) / kTile;
  std::vector<double> tile_ss(static_cast<size_t>(tiles));
  // u = a x - sum (+ noise before the projection), written to tmp; tile_ss gets ||tmp||^2 parts.
  // `sums` holds sum_i c_i G_i, or is null when the rows are accumulated here.
  const auto form_update = [&](const double* sums) {
    at::parallel_for(0, tiles, 1, [&](int64_t tb, int64_t te) {
      std::vector<double> acc_buf(kTile);
      double* acc = acc_buf.data();
      for (int64_t t = tb; t < te; ++t) {
        const int64_t j0 = t * kTile, m = std::min(kTile, d - j0);
        if (sums != nullptr) {
          std::copy(sums + j0, sums + j0 + m, acc);
        } else {
          std::fill(acc, acc + m, 0.0);
          accumulate_rows(acc, G, d, j0, coef.data(), 0, B, m);
        }
        for (int64_t j = 0; j < m; ++j) acc[j] = a * static_cast<double>(x[j0 + j]) - acc[j];
        if (noisy && !noise_after_projection) add_noise(acc, j0, m, noise_std, seed, offset);
        tile_ss[t] = sum_squares_of_doubles_as_float(acc, tmp + j0, m);
      }
    });
  };
  if (have_norms) {
    for (int64_t i = 0; i < B; ++i) {
      if (!(std::isfinite(n[i]) && n[i] >= 0)) return {StepOutcome::kBadNorm, i, n[i]};
      set_coef(i);
    }
    form_update(nullptr);
  } else if (static_cast<double>(B) * static_cast<double>(d) * 4.0 <= kRowBlockBytes ||
             static_cast<double>(d) * 32.0 > kRowBlockBytes) {
    // G fits in the cache budget (the update pass re-reads it from cache), or a block of eight
    // rows would not: blocking then re-reads nothing from cache and only adds the traffic of a
    // d-long accumulator per block (measured slower at d = 1e6), so both passes stream G.
    row_norms_cpu(G, B, d, n);
    for (int64_t i = 0; i < B; ++i) {
      if (!std::isfinite(n[i])) return {StepOutcome::kNonFiniteGrads, i, n[i]};
      set_coef(i);
    }
    form_update(nullptr);
  } else {
    // Blocks of rows small enough to stay in the last-level cache: norms of the block (first
    // read, from memory), then their weighted sum into `sums` (second read, from cache). Blocks
    // are a multiple of 8 rows, so the rows are grouped and added as in the unblocked path and
    // the result is bit-identical.
    int64_t rb = static_cast<int64_t>(kRowBlockBytes / (4.0 * d));
    rb -= rb % 8;
    std::vector<double> sums(static_cast<size_t>(d), 0.0);
    for (int64_t i0 = 0; i0 < B; i0 += rb) {
      const int64_t i1 = std::min(B, i0 + rb);
      row_norms_cpu(G + i0 * d, i1 - i0, d, n + i0);
      for (int64_t i = i0; i < i1; ++i) {
        if (!std::isfinite(n[i])) return {StepOutcome::kNonFiniteGrads, i, n[i]};
        set_coef(i);
      }
      at::parallel_for(0, tiles, 1, [&](int64_t tb, int64_t te) {
        for (int64_t t = tb; t < te; ++t) {
          const int64_t j0 = t * kTile, m = std::min(kTile, d - j0);
          accumulate_rows(sums.data() + j0, G, d, j0, coef.data(), i0, i1, m);
        }
      });
    }
    form_update(sums.data());
  }
  double ss = 0;
  for (int64_t t = 0; t < tiles; ++t) ss += tile_ss[t];
  if (!std::isfinite(ss)) {
    if (!all_finite(x, d)) return {StepOutcome::kNonFiniteParams, -1, ss};
    if (!all_finite(G, B * d)) return {StepOutcome::kNonFiniteGrads, -1, ss};
    return {StepOutcome::kOverflow, -1, ss};
  }
  double f = 1.0;
  if (std::isfinite(radius)) {
    const double target = radius * (1.0 - kProjectionSlack);
    const double norm = std::sqrt(ss);
    if (norm > target) f = target / norm;
  }
  const bool noise_last = noisy && noise_after_projection;
  at::parallel_for(0, tiles, 1, [&](int64_t tb, int64_t te) {
    std::vector<double> buf_storage(kTile);
    double* buf = buf_storage.data();
    for (int64_t t = tb; t < te; ++t) {
      const int64_t j0 = t * kTile, m = std::min(kTile, d - j0);
      if (f == 1.0 && !noise_last) {
        std::copy(tmp + j0, tmp + j0 + m, xo + j0);
        continue;
      }
      for (int64_t j = 0; j < m; ++j) buf[j] = f * static_cast<double>(tmp[j0 + j]);
      if (noise_last) add_noise(buf, j0, m, noise_std, seed, offset);
      for (int64_t j = 0; j < m; ++j) xo[j0 + j] = static_cast<float>(buf[j]);
    }
  });
  return out;
}

void philox4x32_soa_cpu(const int64_t* counters, int64_t n, uint32_t k0, uint32_t k1, int rounds,
                        int64_t* out) {
  for (int64_t j = 0; j < n; j += kNoiseBatch) {
    const int m = static_cast<int>(std::min<int64_t>(kNoiseBatch, n - j));
    philox_soa_batch(counters + 4 * j, m, k0, k1, rounds, out + 4 * j);
  }
}

void fill_gaussian_cpu(void* base, bool is_double, int64_t n,
                                                 uint64_t seed, int64_t offset) {
  const int64_t batches = (blocks_for(n) + kNoiseBatch - 1) / kNoiseBatch;
  at::parallel_for(0, batches, 16, [&](int64_t b, int64_t e) {
    std::vector<double> z_storage(2 * kNoiseBatch);
    double* z = z_storage.data();
    for (int64_t t = b; t < e; ++t) {
      const int64_t j0 = t * 2 * kNoiseBatch;
      const int64_t m = std::min<int64_t>(2 * kNoiseBatch, n - j0);
      gaussian_blocks(seed, static_cast<uint64_t>(offset + t * kNoiseBatch),
                      static_cast<int>(blocks_for(m)), z);
      if (is_double) {
        std::copy(z, z + m, static_cast<double*>(base) + j0);
      } else {
        float* p = static_cast<float*>(base) + j0;
        for (int64_t k = 0; k < m; ++k) p[k] = static_cast<float>(z[k]);
      }
    }
  });
}

}  // namespace certunlearn
