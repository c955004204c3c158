// Argument checks shared by the CPU and CUDA kernels of fastflow::field_step_ and fastflow::draw_: the kernels
// index raw pointers, so every shape, dtype, layout and device assumption is verified here, with a message
// naming the argument.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <optional>

#include "draw_math.h"
#include "field_math.h"

namespace fastflow {

// dots (B, C) and the vectors xn, t, a, mmin, l, l2 (B,) and yn (C,): one floating dtype (float32 or float64);
// jmin (B,) int64; all on one device and contiguous; kind in 0..3. C >= 1, as in the torch specification (min
// over an empty row fails).
inline void check_field_step_args(const at::Tensor& dots, const at::Tensor& xn, const at::Tensor& yn,
                                  const at::Tensor& t, const at::Tensor& a, const at::Tensor& mmin,
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
      {"mmin", mmin, B, dt}, {"jmin", jmin, B, at::kLong}, {"l", l, B, dt}, {"l2", l2, B, dt},
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

namespace fastflow {

// fastflow::draw_: out (n, d) float32/float64 contiguous; x0 (n, d) of out's dtype, contiguous, not overlapping
// out (or absent); a and scale (n,) float64 contiguous; seed a (1,) int64 tensor; everything on out's device. The Philox counter words are
// 32 bits: n <= 2^32 rows, d <= 2^34 (4 elements per counter), 0 <= offset < 2^32. radius_kind in 0..3;
// kind 1 needs a finite D = radius_param > 0 (any real D: see inverse_chi in draw_math.h).
inline void check_draw_args(const at::Tensor& out, const std::optional<at::Tensor>& x0, const at::Tensor& a,
                            const at::Tensor& scale, const at::Tensor& seed, int64_t offset, int64_t radius_kind,
                            double radius_param) {
  TORCH_CHECK(out.dim() == 2, "fastflow::draw_: out must be 2-D (n, d); got shape ", out.sizes());
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "fastflow::draw_: out must be float32 or float64; got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "fastflow::draw_: out must be contiguous; got strides ", out.strides());
  const int64_t n = out.size(0);
  const int64_t d = out.size(1);
  constexpr int64_t k2p32 = int64_t(1) << 32;
  TORCH_CHECK(n <= k2p32, "fastflow::draw_: at most 2^32 rows (the counter's row word); got ", n);
  TORCH_CHECK(d <= 4 * k2p32, "fastflow::draw_: at most 2^34 elements per row; got ", d);
  TORCH_CHECK(offset >= 0 && offset < k2p32, "fastflow::draw_: offset must be in [0, 2^32); got ", offset);
  TORCH_CHECK(radius_kind >= 0 && radius_kind < kNumRadiusKinds,
              "fastflow::draw_: radius_kind must be 0 (1), 1 (1/||h||), 2 (atanh U / ||g||) or 3 "
              "(-log1p(-U) / ||g||); got ", radius_kind);
  if (radius_kind == kRadiusChi) {
    TORCH_CHECK(std::isfinite(radius_param) && radius_param > 0,
                "fastflow::draw_: radius_kind 1 draws 1 / ||h|| with h ~ N(0, I_D), so D = radius_param must be a "
                "finite number > 0; got ", radius_param);
  }
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1,
              "fastflow::draw_: seed must be a one-element int64 tensor (the Philox key); got dtype ",
              seed.scalar_type(), " and shape ", seed.sizes());
  TORCH_CHECK(seed.device() == out.device(), "fastflow::draw_: seed must be on the device of out (", out.device(),
              "), where the kernel reads it; got ", seed.device());
  struct Vec {
    const char* name;
    const at::Tensor& tensor;
  };
  for (const Vec& v : {Vec{"a", a}, Vec{"scale", scale}}) {
    TORCH_CHECK(v.tensor.scalar_type() == at::kDouble, "fastflow::draw_: ", v.name, " must be float64; got ",
                v.tensor.scalar_type());
    TORCH_CHECK(v.tensor.dim() == 1 && v.tensor.size(0) == n, "fastflow::draw_: ", v.name, " must have shape (",
                n, ",) for out of shape ", out.sizes(), "; got ", v.tensor.sizes());
    TORCH_CHECK(v.tensor.device() == out.device(), "fastflow::draw_: ", v.name, " must be on the device of out (",
                out.device(), "); got ", v.tensor.device());
    TORCH_CHECK(v.tensor.is_contiguous(), "fastflow::draw_: ", v.name, " must be contiguous; got stride ",
                v.tensor.strides());
  }
  if (x0.has_value()) {
    const at::Tensor& x = *x0;
    TORCH_CHECK(x.scalar_type() == out.scalar_type(), "fastflow::draw_: x0 must have the dtype of out (",
                out.scalar_type(), "); got ", x.scalar_type());
    TORCH_CHECK(x.sizes() == out.sizes(), "fastflow::draw_: x0 must have the shape of out ", out.sizes(), "; got ",
                x.sizes());
    TORCH_CHECK(x.device() == out.device(), "fastflow::draw_: x0 must be on the device of out (", out.device(),
                "); got ", x.device());
    TORCH_CHECK(x.is_contiguous(), "fastflow::draw_: x0 must be contiguous; got strides ", x.strides());
    // kinds 2 and 3 store g in out before reading x0: x0 must be its own memory
    at::assert_no_overlap(out, x);
  }
}

}  // namespace fastflow
