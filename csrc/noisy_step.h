// Shared declarations of the noisy-step op: argument validation used by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace certunlearn {

// Relative shrink of the projection radius so that the float32 result lies inside the ball
// (certunlearn_train/_reference.py: PROJECTION_SLACK).
constexpr double kProjectionSlack = 0x1p-20;

// Validates everything that does not need the tensors' values (shapes, dtypes, devices,
// contiguity, scalars, counter range). Returns an empty string, or a message naming the argument,
// the constraint and the value received, which the caller raises as c10::ValueError (Python
// ValueError) from the registered entry point.
std::string step_input_error(const at::Tensor& params, const at::Tensor& grads,
                       const std::optional<at::Tensor>& norms, double lr, double weight_decay,
                       double clip, double noise_std, double radius, int64_t offset);

// Validates the output tensor and the counter range of a gaussian_noise_ fill (same contract).
std::string noise_input_error(const at::Tensor& out, int64_t offset);

// Number of Philox counter blocks (two normals each) a draw of n normals uses.
inline int64_t blocks_for(int64_t n) { return n / 2 + (n % 2); }

}  // namespace certunlearn
