// CUDA kernels of the fused noisy step (semantics: tests/kernel/reference.py). Plain CUDA,
// no torch headers; the torch binding is noisy_step_binding.cpp.
//
// Passes, all on the caller's stream:
//   1. row_norm_partials: sum of squares of fixed chunks of each row, in double (skipped when the
//      norms are given);
//   2. finalize_rows: row norms, finiteness checks, clip coefficients c_i = lr * s_i / B;
//   3. update: column-parallel, each thread owns 4 adjacent columns (float4 loads), walks all B
//      rows accumulating sum_i c_i G_i in double registers, forms u = (1 - lr wd) x - sum, adds
//      the noise generated in registers when it precedes the projection, stores u to scratch and
//      reduces ||u||^2 per block;
//   4. finalize_projection: one block sums the per-block partials in a fixed order and computes
//      the projection factor (or flags a non-finite update);
//   5. apply: x = f u (+ noise generated in registers), skipped entirely if any check failed.
// All reductions use fixed shapes and orders, so results are reproducible run to run.
#include "noisy_step_kernels.cuh"

#include <cmath>

#include "../philox.h"

namespace certunlearn {
namespace cuda {
namespace {

constexpr int kNormThreads = 256;
constexpr int64_t kNormChunk = 8192;  // elements of one row per row_norm_partials block
constexpr int kUpdateThreads = 128;
constexpr int kFinalizeThreads = 1024;

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_partials[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_partials[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  v = (threadIdx.x < nwarps) ? warp_partials[threadIdx.x] : 0.0;
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

__device__ __forceinline__ bool finite(double v) { return isfinite(v); }

template <bool Vec4>
__global__ void row_norm_partials(const float* __restrict__ G, int64_t B, int64_t d,
                                  int64_t chunks, double* __restrict__ partial) {
  const int64_t c = blockIdx.x;
  const int64_t j0 = c * kNormChunk;
  const int64_t j1 = min(d, j0 + kNormChunk);
  for (int64_t i = blockIdx.y; i < B; i += gridDim.y) {
    const float* row = G + i * d;
    double acc = 0.0;
    if constexpr (Vec4) {
      const float4* row4 = reinterpret_cast<const float4*>(row);
      for (int64_t q = j0 / 4 + threadIdx.x; q < j1 / 4; q += blockDim.x) {
        const float4 v = __ldg(row4 + q);
        acc += double(v.x) * v.x + double(v.y) * v.y + double(v.z) * v.z + double(v.w) * v.w;
      }
    } else {
      for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const double v = __ldg(row + j);
        acc += v * v;
      }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[i * chunks + c] = acc;
  }
}

__global__ void finalize_rows(const double* __restrict__ partial, int64_t chunks,
                              const double* __restrict__ norms_in, double* __restrict__ norms_out,
                              double* __restrict__ coef, int* __restrict__ status, int64_t B,
                              double lr, double clip) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= B) return;
  double n;
  if (norms_in != nullptr) {
    n = norms_in[i];
    if (!(finite(n) && n >= 0.0)) atomicMax(status, int(kStepBadNorms));
  } else {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[i * chunks + c];
    n = sqrt(s);
    if (!finite(n)) atomicMax(status, int(kStepNonFiniteGrads));
  }
  norms_out[i] = n;
  const double s = n > clip ? clip / n : 1.0;
  coef[i] = s * (lr / double(B));
}

// Adds std * z for the columns [col, col + 4) (Vec4) or col alone; col is a multiple of 4 for
// Vec4. Column j uses counter block offset + j / 2, lane j % 2.
template <bool Vec4>
__device__ __forceinline__ void add_noise(double* u, int64_t col, double std, uint64_t seed,
                                          int64_t offset) {
  if constexpr (Vec4) {
    double z0, z1, z2, z3;
    gaussian_pair(seed, uint64_t(offset + col / 2), &z0, &z1);
    gaussian_pair(seed, uint64_t(offset + col / 2 + 1), &z2, &z3);
    u[0] += std * z0;
    u[1] += std * z1;
    u[2] += std * z2;
    u[3] += std * z3;
  } else {
    double z0, z1;
    gaussian_pair(seed, uint64_t(offset + col / 2), &z0, &z1);
    u[0] += std * ((col & 1) ? z1 : z0);
  }
}

template <bool Vec4>
__global__ void __launch_bounds__(kUpdateThreads)
    update(const float* __restrict__ G, const float* __restrict__ x,
           const double* __restrict__ coef, float* __restrict__ tmp,
           double* __restrict__ block_ss, StepParams p) {
  constexpr int W = Vec4 ? 4 : 1;
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t col = t * W;
  double ss = 0.0;
  if (col < p.d) {
    double acc[W];
#pragma unroll
    for (int k = 0; k < W; ++k) acc[k] = 0.0;
    const int64_t B = p.B, d = p.d;
    int64_t i = 0;
    if constexpr (Vec4) {
      const float4* g4 = reinterpret_cast<const float4*>(G + col);
      const int64_t stride4 = d / 4;
      for (; i + 4 <= B; i += 4) {
        float4 v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = __ldg(g4 + (i + r) * stride4);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const double c = __ldg(coef + i + r);
          acc[0] += c * v[r].x;
          acc[1] += c * v[r].y;
          acc[2] += c * v[r].z;
          acc[3] += c * v[r].w;
        }
      }
      for (; i < B; ++i) {
        const float4 v = __ldg(g4 + i * stride4);
        const double c = __ldg(coef + i);
        acc[0] += c * v.x;
        acc[1] += c * v.y;
        acc[2] += c * v.z;
        acc[3] += c * v.w;
      }
    } else {
      for (; i + 4 <= B; i += 4) {
        float v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = __ldg(G + (i + r) * d + col);
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[0] += __ldg(coef + i + r) * v[r];
      }
      for (; i < B; ++i) acc[0] += __ldg(coef + i) * __ldg(G + i * d + col);
    }
    const double a = 1.0 - p.lr * p.weight_decay;
    double u[W];
    if constexpr (Vec4) {
      const float4 xv = __ldg(reinterpret_cast<const float4*>(x + col));
      u[0] = a * double(xv.x) - acc[0];
      u[1] = a * double(xv.y) - acc[1];
      u[2] = a * double(xv.z) - acc[2];
      u[3] = a * double(xv.w) - acc[3];
    } else {
      u[0] = a * double(__ldg(x + col)) - acc[0];
    }
    if (p.noise_std > 0.0 && !p.noise_after_projection) {
      add_noise<Vec4>(u, col, p.noise_std, p.seed, p.offset);
    }
    float f[W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
      f[k] = float(u[k]);
      ss += double(f[k]) * double(f[k]);
    }
    if constexpr (Vec4) {
      float4 o;
      o.x = f[0];
      o.y = f[1];
      o.z = f[2];
      o.w = f[3];
      *reinterpret_cast<float4*>(tmp + col) = o;
    } else {
      tmp[col] = f[0];
    }
  }
  ss = block_sum(ss);
  if (threadIdx.x == 0) block_ss[blockIdx.x] = ss;
}

__global__ void finalize_projection(const double* __restrict__ block_ss, int64_t nblocks,
                                    double radius, double slack, double* __restrict__ factor,
                                    int* __restrict__ status) {
  double s = 0.0;
  for (int64_t b = threadIdx.x; b < nblocks; b += blockDim.x) s += block_ss[b];
  s = block_sum(s);
  if (threadIdx.x == 0) {
    double f = 1.0;
    if (!finite(s)) {
      if (*status == kStepOk) *status = kStepNonFiniteUpdate;  // keep the more specific code
    } else if (isfinite(radius)) {
      const double target = radius * (1.0 - slack);
      const double norm = sqrt(s);
      if (norm > target) f = target / norm;
    }
    *factor = f;
  }
}

template <bool Vec4>
__global__ void apply(const float* __restrict__ tmp, float* __restrict__ x,
                      const double* __restrict__ factor, const int* __restrict__ status,
                      StepParams p) {
  if (*status != kStepOk) return;  // leave params untouched
  constexpr int W = Vec4 ? 4 : 1;
  const int64_t col = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * W;
  if (col >= p.d) return;
  const double f = *factor;
  double u[W];
  if constexpr (Vec4) {
    const float4 v = *reinterpret_cast<const float4*>(tmp + col);
    u[0] = f * double(v.x);
    u[1] = f * double(v.y);
    u[2] = f * double(v.z);
    u[3] = f * double(v.w);
  } else {
    u[0] = f * double(tmp[col]);
  }
  if (p.noise_std > 0.0 && p.noise_after_projection) {
    add_noise<Vec4>(u, col, p.noise_std, p.seed, p.offset);
  }
  if constexpr (Vec4) {
    float4 o;
    o.x = float(u[0]);
    o.y = float(u[1]);
    o.z = float(u[2]);
    o.w = float(u[3]);
    *reinterpret_cast<float4*>(x + col) = o;
  } else {
    x[col] = float(u[0]);
  }
}

template <typename T>
__global__ void gaussian_fill(T* __restrict__ out, int64_t n, uint64_t seed, int64_t offset) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t j = 2 * k;
  if (j >= n) return;
  double z0, z1;
  gaussian_pair(seed, uint64_t(offset + k), &z0, &z1);
  out[j] = T(z0);
  if (j + 1 < n) out[j + 1] = T(z1);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t row_norm_chunks(int64_t d) { return ceil_div(d, kNormChunk); }

int64_t update_blocks(int64_t d, bool vec4) {
  return ceil_div(vec4 ? ceil_div(d, 4) : d, kUpdateThreads);
}

cudaError_t launch_noisy_step(const float* G, float* x, const double* norms_in, double* norms_out,
                              const StepParams& p, const StepBuffers& buf, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(buf.status, 0, sizeof(int), stream);
  if (err != cudaSuccess) return err;
  const int64_t chunks = row_norm_chunks(p.d);
  if (norms_in == nullptr) {
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(p.B < 65535 ? p.B : 65535));
    if (p.vec4) {
      row_norm_partials<true><<<grid, kNormThreads, 0, stream>>>(G, p.B, p.d, chunks, buf.partial);
    } else {
      row_norm_partials<false><<<grid, kNormThreads, 0, stream>>>(G, p.B, p.d, chunks, buf.partial);
    }
  }
  finalize_rows<<<static_cast<unsigned>(ceil_div(p.B, 128)), 128, 0, stream>>>(
      buf.partial, chunks, norms_in, norms_out, buf.coef, buf.status, p.B, p.lr, p.clip);
  const int64_t nblocks = update_blocks(p.d, p.vec4);
  if (p.vec4) {
    update<true><<<static_cast<unsigned>(nblocks), kUpdateThreads, 0, stream>>>(
        G, x, buf.coef, buf.tmp, buf.block_ss, p);
  } else {
    update<false><<<static_cast<unsigned>(nblocks), kUpdateThreads, 0, stream>>>(
        G, x, buf.coef, buf.tmp, buf.block_ss, p);
  }
  finalize_projection<<<1, kFinalizeThreads, 0, stream>>>(buf.block_ss, nblocks, p.radius,
                                                         p.projection_slack, buf.factor, buf.status);
  if (p.vec4) {
    apply<true><<<static_cast<unsigned>(nblocks), kUpdateThreads, 0, stream>>>(
        buf.tmp, x, buf.factor, buf.status, p);
  } else {
    apply<false><<<static_cast<unsigned>(nblocks), kUpdateThreads, 0, stream>>>(
        buf.tmp, x, buf.factor, buf.status, p);
  }
  return cudaGetLastError();
}

cudaError_t launch_gaussian_noise(void* out, bool is_double, int64_t n, uint64_t seed,
                                  int64_t offset, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(ceil_div(ceil_div(n, 2), threads));
  if (is_double) {
    gaussian_fill<double><<<blocks, threads, 0, stream>>>(static_cast<double*>(out), n, seed, offset);
  } else {
    gaussian_fill<float><<<blocks, threads, 0, stream>>>(static_cast<float*>(out), n, seed, offset);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace certunlearn
