// The fused noisy-step op: schemas (TORCH_LIBRARY), argument checks shared with CUDA, and the
// checked CPU entry points (the kernels are in noisy_step_cpu.cpp, the CUDA ones in cuda/).
//
// One call is one step of noisy, clipped, projected SGD on a flat float32 parameter vector x (d,)
// from per-sample gradients G (B, d) (semantics: tests/kernel/reference.py):
//   s_i = min(1, clip / ||G_i||),  u = (1 - lr wd) x - (lr / B) sum_i s_i G_i,
//   x' = P(u) + std z  or  x' = P(u + std z),  P = projection onto radius (1 - 2^-20) * radius.
// Nothing is written to params before every value check has passed.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "noisy_step.h"
#include "noisy_step_cpu.h"

// An empty module: importing certunlearn_train._C runs the static TORCH_LIBRARY initializers
// below; no pybind11 is involved.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "Registers the torch.ops.certunlearn operators.", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace certunlearn {

namespace {

// The checks build a message instead of throwing; the registered entry points throw it. (A throw
// from these nested helpers crashed the process with GCC 13 / torch 2.11 on the GPU machine,
// while a throw from the entry point itself is caught normally.)
#define CERTUNLEARN_REQUIRE(cond, ...) \
  if (!(cond)) return c10::str(__VA_ARGS__)

std::string scalar_error(const char* name, double value, bool allow_inf) {
  const bool ok = !std::isnan(value) && value >= 0 && (allow_inf || std::isfinite(value));
  CERTUNLEARN_REQUIRE(ok, "noisy_step_: ", name, " must be a ",
                      allow_inf ? "non-negative number (inf allowed)" : "finite non-negative number",
                      ", got ", fmt(value));
  return {};
}

std::string offset_error(const char* op, int64_t offset, int64_t numel) {
  CERTUNLEARN_REQUIRE(
      offset >= 0 && blocks_for(numel) <= std::numeric_limits<int64_t>::max() - offset, op,
      ": offset must satisfy 0 <= offset and offset + ceil(numel/2) <= 2^63 (counter blocks are "
      "never reused), got offset=", fmt(offset), ", numel=", fmt(numel));
  return {};
}

}  // namespace

std::string step_input_error(const at::Tensor& params, const at::Tensor& grads,
                       const std::optional<at::Tensor>& norms, double lr, double weight_decay,
                       double clip, double noise_std, double radius, int64_t offset) {
  CERTUNLEARN_REQUIRE(params.scalar_type() == at::kFloat, "noisy_step_: params must be float32, got ",
                    fmt(params.scalar_type()));
  CERTUNLEARN_REQUIRE(grads.scalar_type() == at::kFloat,
                    "noisy_step_: grads must be float32 (same dtype as params), got ",
                    fmt(grads.scalar_type()));
  CERTUNLEARN_REQUIRE(params.dim() == 1 && params.numel() > 0,
                    "noisy_step_: params must be a non-empty 1-D tensor (d,), got shape ",
                    fmt(params.sizes()));
  const int64_t d = params.numel();
  CERTUNLEARN_REQUIRE(grads.dim() == 2 && grads.size(1) == d,
                    "noisy_step_: grads must have shape (B, d) with d = params.numel() = ", fmt(d),
                    ", got ", fmt(grads.sizes()));
  CERTUNLEARN_REQUIRE(grads.size(0) > 0, "noisy_step_: grads must have B >= 1 rows, got shape ",
                    fmt(grads.sizes()));
  CERTUNLEARN_REQUIRE(grads.device() == params.device(),
                    "noisy_step_: grads must be on params' device ", fmt(params.device()), ", got ",
                    fmt(grads.device()));
  CERTUNLEARN_REQUIRE(params.is_contiguous(), "noisy_step_: params must be contiguous, got strides ",
                    fmt(params.strides()));
  CERTUNLEARN_REQUIRE(grads.is_contiguous(), "noisy_step_: grads must be contiguous, got strides ",
                    fmt(grads.strides()));
  if (norms.has_value()) {
    const at::Tensor& n = *norms;
    CERTUNLEARN_REQUIRE(n.scalar_type() == at::kFloat || n.scalar_type() == at::kDouble,
                      "noisy_step_: norms must be float32 or float64, got ", fmt(n.scalar_type()));
    CERTUNLEARN_REQUIRE(n.dim() == 1 && n.size(0) == grads.size(0),
                      "noisy_step_: norms must have shape (B,) = (", fmt(grads.size(0)), ",), got ",
                      fmt(n.sizes()));
    CERTUNLEARN_REQUIRE(n.device() == params.device(), "noisy_step_: norms must be on params' device ",
                      fmt(params.device()), ", got ", fmt(n.device()));
  }
  for (const std::string& e :
       {scalar_error("lr", lr, false), scalar_error("weight_decay", weight_decay, false),
        scalar_error("clip", clip, true), scalar_error("noise_std", noise_std, false),
        scalar_error("radius", radius, true), offset_error("noisy_step_", offset, d)}) {
    if (!e.empty()) return e;
  }
  return {};
}

std::string noise_input_error(const at::Tensor& out, int64_t offset) {
  CERTUNLEARN_REQUIRE(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
                    "gaussian_noise_: out must be float32 or float64, got ", fmt(out.scalar_type()));
  CERTUNLEARN_REQUIRE(out.is_contiguous(), "gaussian_noise_: out must be contiguous, got strides ",
                    fmt(out.strides()));
  return offset_error("gaussian_noise_", offset, out.numel());
}

namespace {

// Checked CPU entry points: every throw happens here or in the checks above, never inside the
// kernels of noisy_step_cpu.cpp.
at::Tensor noisy_step_cpu(at::Tensor& params, const at::Tensor& grads,
                          const std::optional<at::Tensor>& norms, double lr, double weight_decay,
                          double clip, double noise_std, double radius,
                          bool noise_after_projection, int64_t seed, int64_t offset) {
  const std::string err =
      step_input_error(params, grads, norms, lr, weight_decay, clip, noise_std, radius, offset);
  TORCH_CHECK_VALUE(err.empty(), err);
  TORCH_CHECK_VALUE(params.device().is_cpu(), "noisy_step_: CPU kernel called with params on ",
                    fmt(params.device()));
  const int64_t B = grads.size(0), d = grads.size(1);
  at::Tensor row_norms = norms.has_value()
                             ? norms->to(at::kDouble).contiguous().clone()
                             : at::empty({B}, params.options().dtype(at::kDouble));
  at::Tensor scratch = at::empty({d}, params.options());
  const StepOutcome r = run_step_cpu(
      params.mutable_data_ptr<float>(), grads.const_data_ptr<float>(), B, d,
      row_norms.mutable_data_ptr<double>(), norms.has_value(), lr, weight_decay, clip, noise_std,
      radius, noise_after_projection, static_cast<uint64_t>(seed), offset,
      scratch.mutable_data_ptr<float>());
  switch (r.code) {
    case StepOutcome::kOk:
      return row_norms;
    case StepOutcome::kBadNorm:
      TORCH_CHECK_VALUE(false, "noisy_step_: norms must be finite and non-negative, got norms[",
                        fmt(r.row), "] = ", fmt(r.value), " (params left unchanged)");
    case StepOutcome::kNonFiniteGrads:
      TORCH_CHECK_VALUE(false, "noisy_step_: grads contain non-finite values",
                        r.row >= 0 ? " (row " + std::to_string(r.row) + ")" : std::string(),
                        "; params left unchanged");
    case StepOutcome::kNonFiniteParams:
      TORCH_CHECK_VALUE(false, "noisy_step_: params contain non-finite values; params left "
                               "unchanged");
    case StepOutcome::kOverflow:
      TORCH_CHECK_VALUE(false, "noisy_step_: the update overflowed float32 (lr too large?); "
                               "params left unchanged");
  }
  TORCH_INTERNAL_ASSERT(false, "noisy_step_: unknown outcome ", fmt(static_cast<int>(r.code)));
}

void gaussian_noise_cpu(at::Tensor& out, int64_t seed, int64_t offset) {
  const std::string err = noise_input_error(out, offset);
  TORCH_CHECK_VALUE(err.empty(), err);
  TORCH_CHECK_VALUE(out.device().is_cpu(), "gaussian_noise_: CPU kernel called with out on ",
                    fmt(out.device()));
  fill_gaussian_cpu(out.mutable_data_ptr(), out.scalar_type() == at::kDouble, out.numel(),
                    static_cast<uint64_t>(seed), offset);
}

// The CPU noise path's Philox rounds on arbitrary counters: exposes the raw 32-bit output words
// so the vectorized rounds can be checked against Random123's known-answer vectors directly.
at::Tensor philox4x32_raw_cpu(const at::Tensor& counters, int64_t key0, int64_t key1,
                              int64_t rounds) {
  TORCH_CHECK_VALUE(counters.scalar_type() == at::kLong && counters.dim() == 2 &&
                        counters.size(1) == 4 && counters.is_contiguous(),
                    "_philox4x32_raw: counters must be a contiguous (n, 4) int64 tensor");
  TORCH_CHECK_VALUE(counters.device().is_cpu(), "_philox4x32_raw: counters must be on the CPU");
  const int64_t* words = counters.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < counters.numel(); ++i) {
    TORCH_CHECK_VALUE(words[i] >= 0 && words[i] <= 0xffffffffLL,
                      "_philox4x32_raw: counter words must be in [0, 2^32), got ", words[i]);
  }
  TORCH_CHECK_VALUE(key0 >= 0 && key0 <= 0xffffffffLL && key1 >= 0 && key1 <= 0xffffffffLL,
                    "_philox4x32_raw: key words must be in [0, 2^32), got ", key0, ", ", key1);
  TORCH_CHECK_VALUE(rounds >= 1 && rounds <= 16, "_philox4x32_raw: rounds must be in [1, 16], got ",
                    rounds);
  at::Tensor out = at::empty({counters.size(0), 4}, counters.options());
  philox4x32_soa_cpu(counters.const_data_ptr<int64_t>(), counters.size(0),
                     static_cast<uint32_t>(key0), static_cast<uint32_t>(key1),
                     static_cast<int>(rounds), out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace

// seed and offset are SymInt in the schemas so that torch.compile can keep them symbolic (a new
// offset every step must not recompile); the kernels still take int64_t: by the time a kernel
// runs, every SymInt is a concrete integer.
TORCH_LIBRARY(certunlearn, m) {
  m.def("noisy_step_(Tensor(a!) params, Tensor grads, Tensor? norms, float lr, "
        "float weight_decay, float clip, float noise_std, float radius, "
        "bool noise_after_projection, SymInt seed, SymInt offset) -> Tensor");
  m.def("gaussian_noise_(Tensor(a!) out, SymInt seed, SymInt offset) -> ()");
  m.def("_philox4x32_raw(Tensor counters, int key0, int key1, int rounds=10) -> Tensor");
}

TORCH_LIBRARY_IMPL(certunlearn, CPU, m) {
  m.impl("noisy_step_", &noisy_step_cpu);
  m.impl("gaussian_noise_", &gaussian_noise_cpu);
  m.impl("_philox4x32_raw", &philox4x32_raw_cpu);
}

}  // namespace certunlearn
