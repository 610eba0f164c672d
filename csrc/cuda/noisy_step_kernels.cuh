// CUDA kernels of the noisy-step op: plain C++/CUDA interface, no torch headers, so that
// noisy_step_kernels.cu compiles with a bare `nvcc -c` (tests/kernel checks sm_80 and sm_90).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace certunlearn {
namespace cuda {

// Status codes written to StepBuffers::status (0 = all checks passed, params written).
enum StepStatus : int {
  kStepOk = 0,
  kStepNonFiniteGrads = 1,   // a row norm is not finite
  kStepBadNorms = 2,         // a precomputed norm is negative or not finite
  kStepNonFiniteUpdate = 3,  // params or grads non-finite, or the update overflowed float32
};

// Device scratch for one step; sizes from the helpers below.
struct StepBuffers {
  double* partial;   // row_norm_chunks(d) * B partial sums of squares
  double* coef;      // B clip coefficients lr * s_i / B
  double* block_ss;  // update_blocks(d, vec4) partial sums of squares of u
  double* factor;    // 1 projection factor
  int* status;       // 1 StepStatus
  float* tmp;        // d: u (+ noise when it precedes the projection)
};

struct StepParams {
  int64_t B;
  int64_t d;
  double lr;
  double weight_decay;
  double clip;
  double noise_std;
  double radius;              // +inf: no projection
  double projection_slack;    // relative shrink of the radius (2^-20)
  bool noise_after_projection;
  uint64_t seed;
  int64_t offset;
  bool vec4;                  // d % 4 == 0 and all pointers 16-byte aligned
};

int64_t row_norm_chunks(int64_t d);
int64_t update_blocks(int64_t d, bool vec4);

// One step on `stream`: G (B, d) row-major, x (d) updated in place only if every check passes,
// norms_in (B doubles) or nullptr to compute the norms, norms_out (B doubles). The caller reads
// *status after the stream reaches this point.
cudaError_t launch_noisy_step(const float* G, float* x, const double* norms_in, double* norms_out,
                              const StepParams& p, const StepBuffers& buf, cudaStream_t stream);

// out[i] = z_i, i < n, the standard normals of (seed, offset) (layout in ../philox.h), stored as
// float (is_double = false) or double.
cudaError_t launch_gaussian_noise(void* out, bool is_double, int64_t n, uint64_t seed,
                                  int64_t offset, cudaStream_t stream);

}  // namespace cuda
}  // namespace certunlearn
