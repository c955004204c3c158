// CPU kernels of fastflow::rk_combine_ and fastflow::rk_error_norm_, the fused step updates of the Runge-Kutta
// solvers (specification: fastflow/ode/step_reference.py).
//
// Both are one pass over the stage buffers (the stages are separate (B, d) tensors: f's outputs, uncopied). A row is cut into tiles of kTile columns (fixed, whatever the thread
// count); per tile, acc = sum_j c_j K_j is built in a stack buffer that stays in L1 (4 KiB for float32), up to 4
// stages streamed side by side per loop, then combined with y (and y_new). Zero coefficients are skipped. Each loop
// is a plain SIMD loop over the tile. At (B, d) = (1000, 3072) float32 this moves ~45 GB/s on 2 cores, 1.7x the
// reference for a combination and 5x for the error norm (benchmarks/bench_ode_step.py); 4096-column tiles measured
// no faster, and one loop per stage ~15% slower.
//
// Accumulation is in float for float32 / float16 / bfloat16 states and in double for float64 states, as in the
// Triton kernels (kernels/ode.py). The error norm's sum of squares is in double, per tile in 8 fixed lanes
// (element i adds into lane i mod 8), and the tiles of a row are added in order: the result does not depend on the
// number of threads, which only decides who computes which tile.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "simd.h"

// The float32 tile functions are multi-versioned (simd.h), like draw.cpp's.

namespace fastflow {
namespace {

// Columns per tile: the accumulator (4 KiB float32, 8 KiB float64) and one stage's slice stay in L1.
constexpr int64_t kTile = 1024;
// Work per at::parallel_for task, in elements of one stage: ~0.1 ns each when streaming from memory, so 64K
// elements (~50 us with 7 stages) amortise the task overhead and still split (1000, 3072) into ~47 tasks.
constexpr int64_t kGrainElems = 65536;
constexpr int kLanes = 8;

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The stages with a nonzero coefficient, as (index, coefficient rounded to the accumulation dtype).
template <typename acc_t>
struct Stage {
  int64_t j;
  acc_t c;
};

template <typename acc_t>
std::vector<Stage<acc_t>> nonzero_stages(c10::ArrayRef<double> coeffs) {
  std::vector<Stage<acc_t>> st;
  for (int64_t j = 0; j < static_cast<int64_t>(coeffs.size()); ++j) {
    if (coeffs[j] != 0.0) st.push_back({j, static_cast<acc_t>(coeffs[j])});
  }
  return st;
}

// acc[0, n) = (acc[0, n) if ADD) + sum_{g < G} c[g] k[g][0, n): G stages streamed side by side in one loop.
template <int G, bool ADD, typename scalar_t, typename acc_t>
FASTFLOW_INLINE void group_sum(acc_t* __restrict__ acc, const scalar_t* const* k, const acc_t* c, int64_t n) {
  const scalar_t* __restrict__ k0 = k[0];
  const scalar_t* __restrict__ k1 = k[G > 1 ? 1 : 0];
  const scalar_t* __restrict__ k2 = k[G > 2 ? 2 : 0];
  const scalar_t* __restrict__ k3 = k[G > 3 ? 3 : 0];
  for (int64_t i = 0; i < n; ++i) {
    acc_t s = c[0] * static_cast<acc_t>(k0[i]);
    if constexpr (ADD) s = acc[i] + s;
    if constexpr (G > 1) s += c[1] * static_cast<acc_t>(k1[i]);
    if constexpr (G > 2) s += c[2] * static_cast<acc_t>(k2[i]);
    if constexpr (G > 3) s += c[3] * static_cast<acc_t>(k3[i]);
    acc[i] = s;
  }
}

// acc[0, n) = sum_s c_s K[j_s][0, n) over the ns > 0 stages st, K[j] pointing at the tile's first element of
// stage j. The stages go in groups of up to 4 per loop (the terms are added in stage order either way).
template <typename scalar_t, typename acc_t>
FASTFLOW_INLINE void stage_sum(acc_t* __restrict__ acc, const scalar_t* const* K, const Stage<acc_t>* st,
                                  int64_t ns, int64_t n) {
  for (int64_t s0 = 0; s0 < ns; s0 += 4) {
    const scalar_t* k[4];
    acc_t c[4];
    const int64_t g = std::min<int64_t>(4, ns - s0);
    for (int64_t q = 0; q < g; ++q) {
      k[q] = K[st[s0 + q].j];
      c[q] = st[s0 + q].c;
    }
    const bool add = s0 > 0;
    switch (g * 2 + add) {
      case 2: group_sum<1, false>(acc, k, c, n); break;
      case 3: group_sum<1, true>(acc, k, c, n); break;
      case 4: group_sum<2, false>(acc, k, c, n); break;
      case 5: group_sum<2, true>(acc, k, c, n); break;
      case 6: group_sum<3, false>(acc, k, c, n); break;
      case 7: group_sum<3, true>(acc, k, c, n); break;
      case 8: group_sum<4, false>(acc, k, c, n); break;
      default: group_sum<4, true>(acc, k, c, n); break;
    }
  }
}

// One tile of rk_combine_: o[0, n) = y[0, n) + h sum_s c_s K_s[0, n). o may be y (read before written).
template <typename scalar_t, typename acc_t>
FASTFLOW_INLINE void combine_tile(scalar_t* o, const scalar_t* y, const scalar_t* const* K,
                                     const Stage<acc_t>* st, int64_t ns, acc_t h, int64_t n) {
  acc_t acc[kTile];
  stage_sum(acc, K, st, ns, n);
  for (int64_t i = 0; i < n; ++i) o[i] = static_cast<scalar_t>(static_cast<acc_t>(y[i]) + h * acc[i]);
}

// One tile of rk_error_norm_: the sum over [0, n) of (h sum_s e_s K_s / (max(|y|, |y_new|) rtol + atol))^2, in
// the reference's order of operations, squares summed in double in kLanes fixed lanes.
template <typename scalar_t, typename acc_t>
FASTFLOW_INLINE double error_tile(const scalar_t* __restrict__ y, const scalar_t* __restrict__ yn,
                                     const scalar_t* const* K, const Stage<acc_t>* st, int64_t ns,
                                     acc_t h, acc_t rtol, acc_t atol, int64_t n) {
  acc_t acc[kTile];
  stage_sum(acc, K, st, ns, n);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = std::abs(static_cast<acc_t>(y[i]));
    const acc_t b = std::abs(static_cast<acc_t>(yn[i]));
    // NaN-propagating max, as torch.maximum: a NaN state gives a NaN norm (a rejected step)
    const acc_t m = (a != a || a > b) ? a : b;
    acc[i] = (acc[i] * h) / (m * rtol + atol);
  }
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(acc[i + l]) * static_cast<double>(acc[i + l]);
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] += static_cast<double>(acc[i]) * static_cast<double>(acc[i]);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// The float32 hot path, compiled once per SIMD level.
FASTFLOW_CLONES void combine_tile_f(float* o, const float* y, const float* const* K, const Stage<float>* st,
                                       int64_t ns, float h, int64_t n) {
  combine_tile<float, float>(o, y, K, st, ns, h, n);
}

FASTFLOW_CLONES double error_tile_f(const float* y, const float* yn, const float* const* K,
                                       const Stage<float>* st, int64_t ns, float h, float rtol, float atol,
                                       int64_t n) {
  return error_tile<float, float>(y, yn, K, st, ns, h, rtol, atol, n);
}

// The stages as separate (B, d) tensors (the solver keeps f's outputs as they come, no copy into one buffer):
// each stage's data pointer and row stride; tile() gives the pointers to (row, col0) of every stage.
template <typename scalar_t>
struct StagePtrs {
  std::vector<const scalar_t*> base;
  std::vector<int64_t> row_stride;
  explicit StagePtrs(at::TensorList K) {
    for (const at::Tensor& k : K) {
      base.push_back(k.const_data_ptr<scalar_t>());
      row_stride.push_back(k.stride(0));
    }
  }
  void tile(int64_t row, int64_t col0, const scalar_t** out) const {
    for (size_t j = 0; j < base.size(); ++j) out[j] = base[j] + row * row_stride[j] + col0;
  }
};
constexpr int64_t kMaxStages = 16;

// Calls fn(row, col0, n) for every tile of a (B, d) array, tiles split across threads in contiguous runs.
template <typename F>
void for_each_tile(int64_t B, int64_t d, F fn) {
  const int64_t tiles_per_row = (d + kTile - 1) / kTile;
  const int64_t tile_elems = std::min(d, kTile);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(tile_elems, 1));
  at::parallel_for(0, B * tiles_per_row, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / tiles_per_row;
      const int64_t col0 = (t % tiles_per_row) * kTile;
      fn(row, col0, std::min(kTile, d - col0), t);
    }
  });
}

template <typename scalar_t>
void rk_combine_cpu_kernel(const at::Tensor& out, const at::Tensor& y, at::TensorList K, const at::Tensor& h,
                           c10::ArrayRef<double> coeffs) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t B = y.size(0);
  const int64_t d = y.size(1);
  const auto st = nonzero_stages<acc_t>(coeffs);
  const int64_t ns = static_cast<int64_t>(st.size());
  const scalar_t* Y = y.const_data_ptr<scalar_t>();
  const StagePtrs<scalar_t> KP(K);
  const double* H = h.const_data_ptr<double>();
  scalar_t* OUT = out.mutable_data_ptr<scalar_t>();
  const int64_t sy = y.stride(0), so = out.stride(0);
  for_each_tile(B, d, [&](int64_t row, int64_t col0, int64_t n, int64_t) {
    const scalar_t* __restrict__ yr = Y + row * sy + col0;
    scalar_t* o = OUT + row * so + col0;  // may be y itself (every element is read before it is written)
    if (st.empty()) {
      for (int64_t i = 0; i < n; ++i) o[i] = yr[i];
      return;
    }
    const acc_t hr = static_cast<acc_t>(H[row]);
    const scalar_t* k[kMaxStages];
    KP.tile(row, col0, k);
    if constexpr (std::is_same_v<scalar_t, float>) {
      combine_tile_f(o, yr, k, st.data(), ns, hr, n);
    } else {
      combine_tile<scalar_t, acc_t>(o, yr, k, st.data(), ns, hr, n);
    }
  });
}

template <typename scalar_t>
void rk_error_norm_cpu_kernel(const at::Tensor& out, const at::Tensor& y, const at::Tensor& y_new,
                              at::TensorList K, const at::Tensor& h, c10::ArrayRef<double> e_coeffs, double rtol,
                              double atol) {
  using acc_t = acc_type_t<scalar_t>;
  using out_t = acc_t;  // float32 norms for float32 / 16-bit states, float64 for float64
  const int64_t B = y.size(0);
  const int64_t d = y.size(1);
  const auto st = nonzero_stages<acc_t>(e_coeffs);
  const int64_t ns = static_cast<int64_t>(st.size());
  out_t* OUT = out.mutable_data_ptr<out_t>();
  if (st.empty()) {  // no error estimate: the reference returns zeros
    std::fill(OUT, OUT + B, out_t(0));
    return;
  }
  const scalar_t* Y = y.const_data_ptr<scalar_t>();
  const scalar_t* YN = y_new.const_data_ptr<scalar_t>();
  const StagePtrs<scalar_t> KP(K);
  const double* H = h.const_data_ptr<double>();
  const int64_t sy = y.stride(0), syn = y_new.stride(0);
  const acc_t rt = static_cast<acc_t>(rtol), at_ = static_cast<acc_t>(atol);
  const int64_t tiles_per_row = (d + kTile - 1) / kTile;
  std::vector<double> part(B * tiles_per_row);
  for_each_tile(B, d, [&](int64_t row, int64_t col0, int64_t n, int64_t tile) {
    const scalar_t* yr = Y + row * sy + col0;
    const scalar_t* ynr = YN + row * syn + col0;
    const scalar_t* k[kMaxStages];
    KP.tile(row, col0, k);
    const acc_t hr = static_cast<acc_t>(H[row]);
    if constexpr (std::is_same_v<scalar_t, float>) {
      part[tile] = error_tile_f(yr, ynr, k, st.data(), ns, hr, rt, at_, n);
    } else {
      part[tile] = error_tile<scalar_t, acc_t>(yr, ynr, k, st.data(), ns, hr, rt, at_, n);
    }
  });
  for (int64_t row = 0; row < B; ++row) {
    double s = 0;
    for (int64_t t = 0; t < tiles_per_row; ++t) s += part[row * tiles_per_row + t];
    OUT[row] = static_cast<out_t>(std::sqrt(s / static_cast<double>(d)));
  }
}

// Shapes, dtypes, layouts and devices the kernels index by raw pointer; messages name the argument.
void check_rk_args(const char* op, const at::Tensor& y, at::TensorList K, const at::Tensor& h,
                   c10::ArrayRef<double> coeffs) {
  TORCH_CHECK(y.dim() == 2, op, ": y must be 2-D (B, d); got shape ", y.sizes());
  const at::ScalarType dt = y.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op,
              ": y must be float32, float64, float16 or bfloat16; got ", dt);
  TORCH_CHECK(y.device().is_cpu(), op, " (CPU kernel): tensors must be on the CPU; got ", y.device());
  const int64_t B = y.size(0);
  const int64_t d = y.size(1);
  TORCH_CHECK(y.stride(1) == 1 || d <= 1, op, ": y must have contiguous columns; got strides ", y.strides());
  const int64_t S = static_cast<int64_t>(K.size());
  TORCH_CHECK(S >= static_cast<int64_t>(coeffs.size()), op, ": ", coeffs.size(), " coefficients for K with ", S,
              " stages");
  TORCH_CHECK(S <= kMaxStages, op, ": at most ", kMaxStages, " stages; got ", S);
  for (int64_t j = 0; j < S; ++j) {
    const at::Tensor& k = K[j];
    TORCH_CHECK(k.dim() == 2 && k.size(0) == B && k.size(1) == d, op, ": K[", j, "] must have shape (", B, ", ",
                d, ") for y of shape ", y.sizes(), "; got ", k.sizes());
    TORCH_CHECK(k.scalar_type() == dt, op, ": K[", j, "] must have the dtype of y (", dt, "); got ",
                k.scalar_type());
    TORCH_CHECK(k.device() == y.device(), op, ": K[", j, "] must be on the device of y; got ", k.device());
    TORCH_CHECK(k.stride(1) == 1 || d <= 1, op, ": K[", j, "] must have contiguous columns; got strides ",
                k.strides());
  }
  TORCH_CHECK(h.dim() == 1 && h.size(0) == B, op, ": h must have shape (", B, ",); got ", h.sizes());
  TORCH_CHECK(h.scalar_type() == at::kDouble, op, ": h must be float64; got ", h.scalar_type());
  TORCH_CHECK(h.device() == y.device(), op, ": h must be on the device of y; got ", h.device());
  TORCH_CHECK(h.is_contiguous(), op, ": h must be contiguous; got stride ", h.strides());
}

// fastflow::rk_combine_: out = y + h sum_j coeffs[j] K[j]; out (B, d) of y's dtype, may be y itself.
void rk_combine_cpu(const at::Tensor& out, const at::Tensor& y, at::TensorList K, const at::Tensor& h,
                    c10::ArrayRef<double> coeffs) {
  constexpr const char* op = "fastflow::rk_combine_";
  check_rk_args(op, y, K, h, coeffs);
  TORCH_CHECK(out.sizes() == y.sizes() && out.scalar_type() == y.scalar_type() && out.device() == y.device(), op,
              ": out must have the shape, dtype and device of y (", y.sizes(), ", ", y.scalar_type(), "); got ",
              out.sizes(), ", ", out.scalar_type(), ", ", out.device());
  TORCH_CHECK(out.stride(1) == 1 || out.size(1) <= 1, op, ": out must have contiguous columns; got strides ",
              out.strides());
  at::assert_no_internal_overlap(out);
  at::assert_no_partial_overlap(out, y);  // out == y (in-place update) is fine, a shifted view is not
  for (const at::Tensor& k : K) at::assert_no_overlap(out, k);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastflow::rk_combine_", [&] {
    rk_combine_cpu_kernel<scalar_t>(out, y, K, h, coeffs);
  });
}

// fastflow::rk_error_norm_: out (B,) = sqrt(mean_d (h sum_j e_j K_j / (atol + rtol max(|y|, |y_new|)))^2);
// out float64 for float64 states, else float32.
void rk_error_norm_cpu(const at::Tensor& out, const at::Tensor& y, const at::Tensor& y_new, at::TensorList K,
                       const at::Tensor& h, c10::ArrayRef<double> e_coeffs, double rtol, double atol) {
  constexpr const char* op = "fastflow::rk_error_norm_";
  check_rk_args(op, y, K, h, e_coeffs);
  TORCH_CHECK(y_new.sizes() == y.sizes() && y_new.scalar_type() == y.scalar_type() && y_new.device() == y.device(),
              op, ": y_new must have the shape, dtype and device of y (", y.sizes(), ", ", y.scalar_type(),
              "); got ", y_new.sizes(), ", ", y_new.scalar_type(), ", ", y_new.device());
  TORCH_CHECK(y_new.stride(1) == 1 || y_new.size(1) <= 1, op, ": y_new must have contiguous columns; got strides ",
              y_new.strides());
  const at::ScalarType odt = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(out.dim() == 1 && out.size(0) == y.size(0) && out.scalar_type() == odt && out.is_contiguous() &&
                  out.device() == y.device(),
              op, ": out must be a contiguous (", y.size(0), ",) ", odt, " tensor on the device of y; got ",
              out.sizes(), " ", out.scalar_type(), " with strides ", out.strides());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastflow::rk_error_norm_", [&] {
    rk_error_norm_cpu_kernel<scalar_t>(out, y, y_new, K, h, e_coeffs, rtol, atol);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CPU, m) {
  m.impl("rk_combine_", &rk_combine_cpu);
  m.impl("rk_error_norm_", &rk_error_norm_cpu);
}

}  // namespace fastflow
