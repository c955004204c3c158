// CPU kernel of fastflow::draw_, the fused sampler: out_i = a_i x0_i + scale_i rho_i g_i for each row i, with
// g_i ~ N(0, I_d) from Philox4x32-10 (philox.h) and the radius factor rho_i of draw_math.h.
//
// Each row is drawn start to finish by one thread from its own counters, so the output does not depend on the
// number of threads (nor on the grain): at::parallel_for only decides which thread draws which rows.
//
// float32 (the hot path): a row is drawn in blocks of kBlockGroups counters. One loop runs Philox over the block,
// one runs Box-Muller (the branch-free polynomials of philox.h), one forms a x0 + c g in double and rounds once;
// each is a SIMD loop. The row function is compiled for AVX-512, AVX2 and baseline x86-64 (target_clones; the
// loader picks one at run time), and all three give bitwise the same output: -ffp-contract=off, and the sum of
// squares of kinds 2 and 3 is kept in 8 fixed lanes (element j adds into lane j mod 8), whatever the SIMD width.
// float64: one group at a time, with libm's log/sin/cos.
//
// Kinds 2 and 3 need ||g|| before any element is final: g is stored in out on a first pass over the row, its
// norm summed, and the second pass rescales it in place (the row is still in L1/L2 for d up to ~10^4; above that
// it is one more read of the row, cheaper than drawing it twice).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>

#include "checks.h"
#include "draw_math.h"
#include "philox.h"
#include "simd.h"


namespace fastflow {
namespace {

// Work per at::parallel_for task, in elements: ~1 ns per float32 Gaussian, so 32768 elements (~30 us)
// amortise the task overhead.
constexpr int64_t kGrainElems = 32768;
// Counters per block (4 Gaussians each): 1 KiB per word array, in L1 with the row's block.
constexpr int kBlockGroups = 64;
constexpr int kBlock = 4 * kBlockGroups;

// The 4m Gaussians of groups q0 .. q0 + m - 1 of (row, stream), m <= kBlockGroups, into buf (element order).
FASTFLOW_INLINE void normals_block_f(uint64_t seed, int64_t q0, int m, uint32_t row, uint32_t offset,
                                     uint32_t stream, float* __restrict__ buf) {
  uint32_t w0[kBlockGroups], w1[kBlockGroups], w2[kBlockGroups], w3[kBlockGroups];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t g0 = static_cast<uint32_t>(q0);
#pragma omp simd
  for (int q = 0; q < m; ++q) {
    const philox::U32x4 c = philox::philox4x32_10(philox::U32x4{g0 + q, row, offset, stream}, k0, k1);
    w0[q] = c.x;
    w1[q] = c.y;
    w2[q] = c.z;
    w3[q] = c.w;
  }
  float z0[kBlockGroups], z1[kBlockGroups], z2[kBlockGroups], z3[kBlockGroups];
#pragma omp simd
  for (int q = 0; q < m; ++q) {
    philox::box_muller_f(w0[q], w1[q], z0[q], z1[q]);
    philox::box_muller_f(w2[q], w3[q], z2[q], z3[q]);
  }
  for (int q = 0; q < m; ++q) {
    buf[4 * q] = z0[q];
    buf[4 * q + 1] = z1[q];
    buf[4 * q + 2] = z2[q];
    buf[4 * q + 3] = z3[q];
  }
}

// o[j] = round(a x[j] + c g[j]) (or round(c g[j]) without x), in double.
FASTFLOW_INLINE void axpy_f(float* __restrict__ o, const float* __restrict__ x, const float* __restrict__ g, int64_t len,
                            double a, double c) {
  if (x == nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) o[j] = static_cast<float>(c * static_cast<double>(g[j]));
  } else {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j)
      o[j] = static_cast<float>(a * static_cast<double>(x[j]) + c * static_cast<double>(g[j]));
  }
}

// o[j] = round(a x[j] + c o[j]) in place (pass 2 of kinds 2 and 3).
FASTFLOW_INLINE void axpy_inplace_f(float* o, const float* __restrict__ x, int64_t len, double a, double c) {
  if (x == nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) o[j] = static_cast<float>(c * static_cast<double>(o[j]));
  } else {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j)
      o[j] = static_cast<float>(a * static_cast<double>(x[j]) + c * static_cast<double>(o[j]));
  }
}

// One float32 row: o = a x + scale rho g. rho_chi is kind 1's factor (1 for kind 0; kinds 2, 3 compute theirs).
FASTFLOW_CLONES void draw_row_f(float* __restrict__ o, const float* __restrict__ x, int64_t d, uint64_t seed,
                                uint32_t row, uint32_t offset, int kind, double rho_chi, double a, double scale) {
  const int64_t groups = (d + 3) / 4;
  alignas(64) float buf[kBlock];
  if (!radius_needs_norm(kind)) {
    const double c = scale * rho_chi;
    for (int64_t q0 = 0; q0 < groups; q0 += kBlockGroups) {
      const int m = static_cast<int>(std::min<int64_t>(kBlockGroups, groups - q0));
      normals_block_f(seed, q0, m, row, offset, philox::kStreamG, buf);
      const int64_t j0 = 4 * q0;
      axpy_f(o + j0, x == nullptr ? nullptr : x + j0, buf, std::min<int64_t>(4 * m, d - j0), a, c);
    }
    return;
  }
  // Pass 1: g into the row, and ||g||^2 of exactly the stored values, in 8 fixed lanes.
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t q0 = 0; q0 < groups; q0 += kBlockGroups) {
    const int m = static_cast<int>(std::min<int64_t>(kBlockGroups, groups - q0));
    normals_block_f(seed, q0, m, row, offset, philox::kStreamG, buf);
    const int64_t j0 = 4 * q0;
    const int len = static_cast<int>(std::min<int64_t>(4 * m, d - j0));  // j0 is a multiple of 8
    int j = 0;
    for (; j + 8 <= len; j += 8) {
#pragma omp simd
      for (int l = 0; l < 8; ++l) {
        o[j0 + j + l] = buf[j + l];
        acc[l] += static_cast<double>(buf[j + l]) * static_cast<double>(buf[j + l]);
      }
    }
    for (; j < len; ++j) {
      o[j0 + j] = buf[j];
      acc[j & 7] += static_cast<double>(buf[j]) * static_cast<double>(buf[j]);
    }
  }
  const double ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  const double c = scale * radial_inverse_cdf(kind, seed, row, offset) / std::sqrt(ss);  // ss > 0: box_muller
  // Pass 2: rescale in place.
  axpy_inplace_f(o, x, d, a, c);
}

// One float64 row, a group at a time (libm log/sin/cos; the sum of squares in element order).
void draw_row_d(double* o, const double* x, int64_t d, uint64_t seed, uint32_t row, uint32_t offset, int kind,
                double rho_chi, double a, double scale) {
  const int64_t groups = (d + 3) / 4;
  double rho = rho_chi;
  if (radius_needs_norm(kind)) {
    double ss = 0;
    for (int64_t q = 0; q < groups; ++q) {
      double z[4];
      philox::normal4<double>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamG, z);
      const int64_t m = std::min<int64_t>(4, d - 4 * q);
      for (int64_t k = 0; k < m; ++k) {
        o[4 * q + k] = z[k];
        ss += z[k] * z[k];
      }
    }
    rho = radial_inverse_cdf(kind, seed, row, offset) / std::sqrt(ss);
    const double c = scale * rho;
    for (int64_t j = 0; j < d; ++j) o[j] = x == nullptr ? c * o[j] : a * x[j] + c * o[j];
    return;
  }
  const double c = scale * rho;
  for (int64_t q = 0; q < groups; ++q) {
    double z[4];
    philox::normal4<double>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamG, z);
    const int64_t m = std::min<int64_t>(4, d - 4 * q);
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = 4 * q + k;
      o[j] = x == nullptr ? c * z[k] : a * x[j] + c * z[k];
    }
  }
}

template <typename scalar_t>
void draw_cpu_kernel(const at::Tensor& out, const std::optional<at::Tensor>& x0, const at::Tensor& a,
                     const at::Tensor& scale, uint64_t seed, uint32_t offset, int kind, double D) {
  const int64_t n = out.size(0);
  const int64_t d = out.size(1);
  scalar_t* OUT = out.mutable_data_ptr<scalar_t>();
  const scalar_t* X0 = x0.has_value() ? x0->const_data_ptr<scalar_t>() : nullptr;
  const double* A = a.const_data_ptr<double>();
  const double* S = scale.const_data_ptr<double>();
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(d, 1));

  at::parallel_for(0, n, grain_rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t row = static_cast<uint32_t>(i);
      const double rho = kind == kRadiusChi ? inverse_chi(D, seed, row, offset) : 1.0;
      const scalar_t* x = X0 == nullptr ? nullptr : X0 + i * d;
      if constexpr (std::is_same_v<scalar_t, float>) {
        draw_row_f(OUT + i * d, x, d, seed, row, offset, kind, rho, A[i], S[i]);
      } else {
        draw_row_d(OUT + i * d, x, d, seed, row, offset, kind, rho, A[i], S[i]);
      }
    }
  });
}

// CPU implementation of the schema in fastflow.cpp: fills out in place.
void draw_cpu(const at::Tensor& out, const std::optional<at::Tensor>& x0, const at::Tensor& a,
              const at::Tensor& scale, const at::Tensor& seed, int64_t offset, int64_t radius_kind,
              double radius_param) {
  check_draw_args(out, x0, a, scale, seed, offset, radius_kind, radius_param);
  TORCH_CHECK(out.device().is_cpu(), "fastflow::draw_ (CPU kernel): tensors must be on the CPU; got ",
              out.device());
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastflow::draw_", [&] {
    // on the CPU the key is a load from the tensor's memory (no device to wait for)
    const uint64_t key = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
    draw_cpu_kernel<scalar_t>(out, x0, a, scale, key, static_cast<uint32_t>(offset),
                              static_cast<int>(radius_kind), radius_param);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CPU, m) { m.impl("draw_", &draw_cpu); }

}  // namespace fastflow
