// CPU kernels of the noisy step (noisy_step_cpu.cpp), called by the checked entry points in
// noisy_step.cpp. They never throw for bad values; they report them in StepOutcome.
#pragma once

#include <cstdint>

namespace certunlearn {

// Outcome of the value checks made while computing a step.
struct StepOutcome {
  enum Code { kOk, kBadNorm, kNonFiniteGrads, kNonFiniteParams, kOverflow } code = kOk;
  int64_t row = -1;    // offending row, when known
  double value = 0.0;  // offending value, when known
};

// One step on x (d) from G (B, d), both float32 contiguous; n (B doubles) holds the precomputed
// norms (have_norms) or receives the computed ones; tmp is d floats of scratch. Writes x only
// when it returns kOk.
StepOutcome run_step_cpu(float* x, const float* G, int64_t B, int64_t d, double* n,
                         bool have_norms, double lr, double weight_decay, double clip,
                         double noise_std, double radius, bool noise_after_projection,
                         uint64_t seed, int64_t offset, float* tmp);

// out[i] = z_i for i < n (float or double), the standard normals of (seed, offset).
void fill_gaussian_cpu(void* out, bool is_double, int64_t n, uint64_t seed, int64_t offset);

// The raw Philox4x32-R output words of n counters (n x 4 words, each in [0, 2^32), as int64),
// from the same structure-of-arrays rounds fill_gaussian_cpu uses (for known-answer tests).
void philox4x32_soa_cpu(const int64_t* counters, int64_t n, uint32_t k0, uint32_t k1, int rounds,
                        int64_t* out);

}  // namespace certunlearn
