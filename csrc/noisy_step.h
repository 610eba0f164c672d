// Shared declarations of the noisy-step op: argument validation used by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace certunlearn {

// Relative shrink of the projection radius so that the float32 result lies inside the ball
// (certunlearn_train/ops.py: PROJECTION_SLACK).
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

// Text of the values quoted in error messages. Messages are assembled from strings only: numeric
// std::ostream insertion inside this extension crashed the process on the GPU machine (GCC 13,
// torch 2.11 wheel), so numbers go through snprintf / std::to_string instead.
inline std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}
inline std::string fmt(int64_t v) { return std::to_string(v); }
inline std::string fmt(int v) { return std::to_string(v); }
inline std::string fmt(c10::IntArrayRef a) {
  std::string s = "(";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  return s + (a.size() == 1 ? ",)" : ")");
}
inline std::string fmt(const c10::Device& d) { return d.str(); }
inline std::string fmt(c10::ScalarType t) { return c10::toString(t); }

// Number of Philox counter blocks (two normals each) a draw of n normals uses.
inline int64_t blocks_for(int64_t n) { return n / 2 + (n % 2); }

}  // namespace certunlearn
