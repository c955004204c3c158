// Argument checks shared by the CPU and CUDA kernels of fastflow::field_step_: the kernels index raw pointers,
// so every shape, dtype, layout and device assumption is verified here, with a message naming the argument.
#pragma once

#include <ATen/ATen.h>

#include "field_math.h"

namespace fastflow {

// dots (B, C) and the vectors xn, t, a, smin, l, l2 (B,) and yn (C,): one floating dtype (float32 or float64);
// jmin (B,) int64; all on one device and contiguous; kind in 0..3. C >= 1, as in the torch specification (min
// over an empty row fails).
inline void check_field_step_args(const at::Tensor& dots, const at::Tensor& xn, const at::Tensor& yn,
                                  const at::Tensor& t, const at::Tensor& a, const at::Tensor& smin,
                                  const at::Tensor& jmin, const at::Tensor& l, const at::Tensor& l2, int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind < kNumKinds,
              "fastflow::field_step_: kind must be 0 (poisson), 1 (gaussian), 2 (tanh) or 3 (exp); got ", kind);
  TORCH_CHECK(dots.dim() == 2, "fastflow::field_step_: dots must be 2-D (B, C); got shape ", dots.sizes());
  TORCH_CHECK(dots.scalar_type() == at::kFloat || dots.scalar_type() == at::kDouble,
              "fastflow::field_step_: dots must be float32 or float64; got ", dots.scalar_type());
  TORCH_CHECK(dots.is_contiguous(), "fastflow::field_step_: dots must be contiguous (it is overwritten row by row); "
              "got strides ", dots.strides(), " for shape ", dots.sizes());
  const int64_t B = dots.size(0);
  const int64_t C = dots.size(1);
  TORCH_CHECK(C >= 1, "fastflow::field_step_: dots must have at least one column (reference point); got shape ",
              dots.sizes());

  struct Vec {
    const char* name;
    const at::Tensor& tensor;
    int64_t size;
    at::ScalarType dtype;
  };
  const at::ScalarType dt = dots.scalar_type();
  const Vec vecs[] = {
      {"xn", xn, B, dt},     {"yn", yn, C, dt},           {"t", t, B, dt}, {"a", a, B, dt},
      {"smin", smin, B, dt}, {"jmin", jmin, B, at::kLong}, {"l", l, B, dt}, {"l2", l2, B, dt},
  };
  for (const Vec& v : vecs) {
    TORCH_CHECK(v.tensor.scalar_type() == v.dtype, "fastflow::field_step_: ", v.name, " must have dtype ", v.dtype,
                v.dtype == dt ? " (that of dots)" : "", "; got ", v.tensor.scalar_type());
    TORCH_CHECK(v.tensor.device() == dots.device(), "fastflow::field_step_: ", v.name,
                " must be on the device of dots (", dots.device(), "); got ", v.tensor.device());
    TORCH_CHECK(v.tensor.dim() == 1 && v.tensor.size(0) == v.size, "fastflow::field_step_: ", v.name,
                " must have shape (", v.size, ",) for dots of shape ", dots.sizes(), "; got ", v.tensor.sizes());
    TORCH_CHECK(v.tensor.is_contiguous(), "fastflow::field_step_: ", v.name, " must be contiguous; got stride ",
                v.tensor.strides());
  }
}

}  // namespace fastflow
