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
  kRadiusChi = 1,   // rho = 1 / ||h||, h ~ N(0, I_D), real D = radius_param > 0 (PFGM++; D = 1: PFGM's 1 / |s|)
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

// D up to this integer: ||h||^2 is the sum of the squares of D Gaussians (its definition; D / 4 Philox calls).
// Above it, or for a non-integer D: 2 Gamma(D / 2, 1), one Marsaglia-Tsang draw (~1.05 Philox calls), so the
// cost of a row's radius does not grow with D (D = 2048 would be 2048 Gaussians, ~2/3 of a CIFAR row's work).
constexpr double kChiSumMaxD = 8;

// Sum of squares of the Gaussians h_0 .. h_{D-1} of row `row` (sub-stream kStreamH, groups 0, 1, ...).
C10_HOST_DEVICE inline double chi2_sum(int64_t D, uint64_t seed, uint32_t row, uint32_t offset) {
  double ss = 0;
  const int64_t groups = (D + 3) / 4;
  for (int64_t q = 0; q < groups; ++q) {
    double h[4];
    philox::normal4<double>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamH, h);
    const int64_t m = D - 4 * q < 4 ? D - 4 * q : 4;
    for (int k = 0; k < m; ++k) ss += h[k] * h[k];
  }
  return ss;
}

// log G, G ~ Gamma(alpha, 1), alpha >= 1, by Marsaglia and Tsang (ACM TOMS 26(3), 2000): with c = alpha - 1/3,
// draw x ~ N(0, 1), v = (1 + x / sqrt(9c))^3, U ~ U(0, 1); accept c v when v > 0 and
// log U < x^2 / 2 + c - c v + c log v (the squeeze U < 1 - 0.0331 x^4 first). Attempt j uses group j of the
// row's kStreamH sub-stream: x from Box-Muller of words (x, y), U from the 53 bits of (z, w). Acceptance is
// >= 95% per attempt at every alpha >= 1; the attempt cap (2^20) is never reached in practice (5%^(2^20)).
C10_HOST_DEVICE inline double log_gamma_mt(double alpha, uint64_t seed, uint32_t row, uint32_t offset) {
  const double c = alpha - 1.0 / 3.0;
  const double k = 1.0 / sqrt(9.0 * c);
  for (uint32_t j = 0; j < (1u << 20); ++j) {
    const philox::U32x4 b = philox::bits(seed, j, row, offset, philox::kStreamH);
    double x, unused;
    philox::box_muller_d(b.x, b.y, x, unused);
    const double v1 = 1.0 + k * x;
    if (v1 <= 0) continue;
    const double v = v1 * v1 * v1;
    const double u = philox::open_uniform53(b.z, b.w);
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2 || log(u) < 0.5 * x2 + c * (1.0 - v + log(v))) return log(c) + log(v);
  }
  return log(c);  // unreachable in practice; the mode's neighbourhood, finite
}

// rho = 1 / ||h||, h ~ N(0, I_D), for a real D > 0 (radius kind 1).
// D <= kChiSumMaxD and integer: the sum of squares. Otherwise ||h||^2 = 2 G, G ~ Gamma(D / 2, 1); for D < 2
// (alpha < 1), Gamma(alpha) = Gamma(alpha + 1) U^(1 / alpha) (Marsaglia-Tsang's boost), with U from the row's
// kStreamU sub-stream, computed in logs so that a tiny U^(1/alpha) does not underflow; G is then kept >= the
// smallest normal double (as torch's Gamma sampler does), so rho is finite.
C10_HOST_DEVICE inline double inverse_chi(double D, uint64_t seed, uint32_t row, uint32_t offset) {
  if (D <= kChiSumMaxD && D == floor(D)) return 1.0 / sqrt(chi2_sum(static_cast<int64_t>(D), seed, row, offset));
  const double alpha = 0.5 * D;
  double log_g;
  if (alpha >= 1) {
    log_g = log_gamma_mt(alpha, seed, row, offset);
  } else {
    const philox::U32x4 b = philox::bits(seed, 0, row, offset, philox::kStreamU);
    log_g = log_gamma_mt(alpha + 1.0, seed, row, offset) + log(philox::open_uniform53(b.x, b.y)) / alpha;
  }
  const double kLogMinNormal = -708.39641853226410622;  // log(2^-1022)
  if (log_g < kLogMinNormal) log_g = kLogMinNormal;
  return exp(-0.5 * (log_g + 0.69314718055994530942));  // (2 G)^(-1/2)
}

}  // namespace fastflow
