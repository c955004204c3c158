// The per-row radius factors of fastflow::draw_, shared by the CPU kernel (draw.cpp) and the CUDA kernel
// (cuda/draw.cu). All in double: there is one factor per row, and Psi^{-1}(U) near U = 1 and 1 / ||h|| need it.
#pragma once

#include <math.h>

#include <cstdint>

#include <c10/macros/Macros.h>

#include "philox.h"

namespace fastflow {

// radius_kind of fastflow::draw_: the factor rho of out_i = a_i x0_i + scale_i rho_i g_i.
enum RadiusKind : int {
  kRadiusOne = 0,   // rho = 1 (Gaussian, rectified flow)
  kRadiusChi = 1,   // rho = 1 / ||h||, h ~ N(0, I_D), D = radius_param (PFGM++; D = 1: PFGM's 1 / |s|)
  kRadiusTanh = 2,  // rho = atanh(U) / ||g|| (radial-CDF family, Psi = tanh)
  kRadiusExp = 3,   // rho = -log1p(-U) / ||g|| (radial-CDF family, Psi(s) = 1 - e^-s)
};
constexpr int kNumRadiusKinds = 4;

// Kinds 2 and 3 need ||g|| of the whole row before any element is final.
C10_HOST_DEVICE inline bool radius_needs_norm(int kind) { return kind == kRadiusTanh || kind == kRadiusExp; }

// Psi^{-1}(U) of row `row` for kinds 2 and 3, from its own sub-stream (counter (0, row, offset, kStreamU)).
C10_HOST_DEVICE inline double radial_inverse_cdf(int kind, uint64_t seed, uint32_t row, uint32_t offset) {
  const philox::U32x4 b = philox::bits(seed, 0, row, offset, philox::kStreamU);
  const double u = philox::open_uniform53(b.x, b.y);
  return kind == kRadiusTanh ? atanh(u) : -log1p(-u);
}

// Sum of squares of the Gaussians h_0 .. h_{D-1} of row `row` (sub-stream kStreamH), over the groups
// g0, g0 + step, ... (one thread: g0 = 0, step = 1; a CUDA block: g0 = threadIdx.x, step = blockDim.x).
C10_HOST_DEVICE inline double chi2_partial(int64_t D, uint64_t seed, uint32_t row, uint32_t offset, int64_t g0,
                                           int64_t step) {
  double ss = 0;
  const int64_t groups = (D + 3) / 4;
  for (int64_t q = g0; q < groups; q += step) {
    double h[4];
    philox::normal4<double>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamH, h);
    const int64_t m = D - 4 * q < 4 ? D - 4 * q : 4;
    for (int k = 0; k < m; ++k) ss += h[k] * h[k];
  }
  return ss;
}

}  // namespace fastflow
