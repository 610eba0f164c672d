// CUDA registration of the noisy-step op: checks arguments, allocates scratch through the caching
// allocator and launches the kernels of noisy_step_kernels.cu on the current stream. The schema
// lives in ../noisy_step.cpp; built only with CUDA (setup.py).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <string>

#include "../noisy_step.h"
#include "noisy_step_kernels.cuh"

namespace certunlearn {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

at::Tensor noisy_step_cuda(at::Tensor& params, const at::Tensor& grads,
                           const std::optional<at::Tensor>& norms, double lr, double weight_decay,
                           double clip, double noise_std, double radius,
                           bool noise_after_projection, int64_t seed, int64_t offset) {
  const std::string input_error =
      step_input_error(params, grads, norms, lr, weight_decay, clip, noise_std, radius, offset);
  TORCH_CHECK_VALUE(input_error.empty(), input_error);
  TORCH_CHECK_VALUE(params.is_cuda(), "noisy_step_: CUDA kernel called with params on ",
                    fmt(params.device()));
  const c10::cuda::CUDAGuard guard(params.device());
  const int64_t B = grads.size(0), d = grads.size(1);
  TORCH_CHECK_VALUE(d / 4 / 128 < std::numeric_limits<int32_t>::max(),
                    "noisy_step_: d = ", fmt(d), " is too large for one launch");
  const auto dopt = params.options().dtype(at::kDouble);
  at::Tensor norms_in;
  if (norms.has_value()) norms_in = norms->to(at::kDouble).contiguous();
  at::Tensor norms_out = at::empty({B}, dopt);

  cuda::StepParams p;
  p.B = B;
  p.d = d;
  p.lr = lr;
  p.weight_decay = weight_decay;
  p.clip = clip;
  p.noise_std = noise_std;
  p.radius = radius;
  p.projection_slack = kProjectionSlack;
  p.noise_after_projection = noise_after_projection;
  p.seed = static_cast<uint64_t>(seed);
  p.offset = offset;
  at::Tensor tmp = at::empty({d}, params.options());
  p.vec4 = d % 4 == 0 && aligned16(grads.const_data_ptr()) && aligned16(params.const_data_ptr()) &&
           aligned16(tmp.const_data_ptr());

  const int64_t chunks = norms.has_value() ? 1 : cuda::row_norm_chunks(d);
  const int64_t nblocks = cuda::update_blocks(d, p.vec4);
  // One double buffer for partial sums, coefficients, block sums and the factor; one int status.
  at::Tensor scratch = at::empty({B * chunks + B + nblocks + 1}, dopt);
  at::Tensor status = at::empty({1}, params.options().dtype(at::kInt));
  cuda::StepBuffers buf;
  buf.partial = scratch.mutable_data_ptr<double>();
  buf.coef = buf.partial + B * chunks;
  buf.block_ss = buf.coef + B;
  buf.factor = buf.block_ss + nblocks;
  buf.status = status.mutable_data_ptr<int>();
  buf.tmp = tmp.mutable_data_ptr<float>();

  const cudaError_t err = cuda::launch_noisy_step(
      grads.const_data_ptr<float>(), params.mutable_data_ptr<float>(),
      norms.has_value() ? norms_in.const_data_ptr<double>() : nullptr,
      norms_out.mutable_data_ptr<double>(), p, buf, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "noisy_step_: CUDA launch failed: ", cudaGetErrorString(err));
  // The kernels write params only if every check passed; report a failed check here.
  const int code = status.item<int>();
  TORCH_CHECK_VALUE(code != cuda::kStepNonFiniteGrads,
                    "noisy_step_: grads contain non-finite values; params left unchanged");
  TORCH_CHECK_VALUE(code != cuda::kStepBadNorms,
                    "noisy_step_: norms must be finite and non-negative; params left unchanged");
  TORCH_CHECK_VALUE(code != cuda::kStepNonFiniteUpdate,
                    "noisy_step_: params or grads contain non-finite values, or the update "
                    "overflowed float32; params left unchanged");
  TORCH_INTERNAL_ASSERT(code == cuda::kStepOk, "noisy_step_: unexpected status ", fmt(code));
  return norms_out;
}

void gaussian_noise_cuda(at::Tensor& out, int64_t seed, int64_t offset) {
  const std::string input_error = noise_input_error(out, offset);
  TORCH_CHECK_VALUE(input_error.empty(), input_error);
  TORCH_CHECK_VALUE(out.is_cuda(), "gaussian_noise_: CUDA kernel called with out on ", fmt(out.device()));
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaError_t err = cuda::launch_gaussian_noise(
      out.mutable_data_ptr(), out.scalar_type() == at::kDouble, out.numel(),
      static_cast<uint64_t>(seed), offset, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "gaussian_noise_: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(certunlearn, CUDA, m) {
  m.impl("noisy_step_", &noisy_step_cuda);
  m.impl("gaussian_noise_", &gaussian_noise_cuda);
}

}  // namespace certunlearn
