// CPU kernel of fastflow::draw_, the fused sampler: out_i = a_i x0_i + scale_i rho_i g_i for each row i, with
// g_i ~ N(0, I_d) from Philox4x32-10 (philox.h) and the radius factor rho_i of draw_math.h.
//
// Each row is drawn start to finish by one thread from its own counters, so the output does not depend on the
// number of threads (nor on the grain): at::parallel_for only decides which thread draws which rows.
//
// The Gaussians are computed in the output dtype (float32: logf/sinf/cosf, as torch.randn does; float64:
// log/sin/cos), the factor rho, the row norm ||g|| and the final a x0 + (scale rho) g in double, rounded once.
// Kinds 2 and 3 need ||g|| before any element is final: g is stored in out on a first pass over the row, its norm
// summed, and the second pass rescales it in place (the row is still in L1/L2 for d up to ~10^4; above that it
// is one more read of the row, cheaper than drawing it twice).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "checks.h"
#include "draw_math.h"
#include "philox.h"

namespace fastflow {
namespace {

// Work per at::parallel_for task, in elements: a Gaussian costs ~10 ns (half a log, sqrt, sin, cos), so 16384
// elements (~0.15 ms) amortise the task overhead.
constexpr int64_t kGrainElems = 16384;

template <typename scalar_t>
void draw_cpu_kernel(const at::Tensor& out, const std::optional<at::Tensor>& x0, const at::Tensor& a,
                     const at::Tensor& scale, uint64_t seed, uint32_t offset, int kind, int64_t D) {
  const int64_t n = out.size(0);
  const int64_t d = out.size(1);
  scalar_t* OUT = out.mutable_data_ptr<scalar_t>();
  const scalar_t* X0 = x0.has_value() ? x0->const_data_ptr<scalar_t>() : nullptr;
  const double* A = a.const_data_ptr<double>();
  const double* S = scale.const_data_ptr<double>();
  const int64_t groups = (d + 3) / 4;
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(d, 1));

  at::parallel_for(0, n, grain_rows, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t row = static_cast<uint32_t>(i);
      scalar_t* o = OUT + i * d;
      const scalar_t* x = X0 == nullptr ? nullptr : X0 + i * d;
      const double a_i = A[i];
      double rho = 1.0;
      if (kind == kRadiusChi) rho = 1.0 / std::sqrt(chi2_partial(D, seed, row, offset, 0, 1));

      if (radius_needs_norm(kind)) {
        // Pass 1: g into the row, and ||g||^2 of exactly the stored values.
        double ss = 0;
        for (int64_t q = 0; q < groups; ++q) {
          scalar_t z[4];
          philox::normal4<scalar_t>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamG, z);
          const int64_t m = std::min<int64_t>(4, d - 4 * q);
          for (int64_t k = 0; k < m; ++k) {
            o[4 * q + k] = z[k];
            ss += double(z[k]) * double(z[k]);
          }
        }
        rho = radial_inverse_cdf(kind, seed, row, offset) / std::sqrt(ss);  // ss > 0: see box_muller
        // Pass 2: rescale in place.
        const double c = S[i] * rho;
        for (int64_t j = 0; j < d; ++j) {
          const double v = c * double(o[j]);
          o[j] = static_cast<scalar_t>(x == nullptr ? v : a_i * double(x[j]) + v);
        }
        continue;
      }

      const double c = S[i] * rho;
      for (int64_t q = 0; q < groups; ++q) {
        scalar_t z[4];
        philox::normal4<scalar_t>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamG, z);
        const int64_t m = std::min<int64_t>(4, d - 4 * q);
        for (int64_t k = 0; k < m; ++k) {
          const int64_t j = 4 * q + k;
          const double v = c * double(z[k]);
          o[j] = static_cast<scalar_t>(x == nullptr ? v : a_i * double(x[j]) + v);
        }
      }
    }
  });
}

// CPU implementation of the schema in fastflow.cpp: fills out in place.
void draw_cpu(const at::Tensor& out, const std::optional<at::Tensor>& x0, const at::Tensor& a,
              const at::Tensor& scale, int64_t seed, int64_t offset, int64_t radius_kind, double radius_param) {
  check_draw_args(out, x0, a, scale, offset, radius_kind, radius_param);
  TORCH_CHECK(out.device().is_cpu(), "fastflow::draw_ (CPU kernel): tensors must be on the CPU; got ",
              out.device());
  if (out.numel() == 0) return;
  const int64_t D = radius_kind == kRadiusChi ? static_cast<int64_t>(radius_param) : 0;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastflow::draw_", [&] {
    draw_cpu_kernel<scalar_t>(out, x0, a, scale, static_cast<uint64_t>(seed), static_cast<uint32_t>(offset),
                              static_cast<int>(radius_kind), D);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CPU, m) { m.impl("draw_", &draw_cpu); }

}  // namespace fastflow
