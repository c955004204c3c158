// The per-element math of fastflow::field_step_, shared by the CPU kernel (field_step.cpp) and the CUDA kernel
// (cuda/field_step.cu) so that both transcribe fastflow/field/logweights.py:gap_log_weight exactly once.
//
// Every function is C10_HOST_DEVICE and templated on the arithmetic type acc_t: the CPU kernel runs in double
// for both input dtypes, the CUDA kernel in the input dtype (float for float32, as torch's own CUDA kernels do).
#pragma once

#include <math.h>

#include <cstdint>
#include <type_traits>

#include <c10/macros/Macros.h>

namespace fastflow {

// The log-weight kinds of fastflow/field/logweights.py.
enum LogWeightKind : int { kPoisson = 0, kGaussian = 1, kTanh = 2, kExp = 3 };
constexpr int kNumKinds = 4;

// TINY of fastflow/field/logweights.py: s is clamped at float32's smallest normal number inside log s in every dtype,
// so that float32 and float64 give the same finite weight to a reference point that coincides with the query.
constexpr double kTiny = 1.1754943508222875e-38;

// float/double overloads of the C math functions: <cmath>'s std:: overloads are not all usable in device code,
// while expf/exp, log1pf/log1p and sqrtf/sqrt exist on the host and on the device.
C10_HOST_DEVICE inline float ff_exp(float x) { return expf(x); }
C10_HOST_DEVICE inline double ff_exp(double x) { return exp(x); }
C10_HOST_DEVICE inline float ff_expm1(float x) { return expm1f(x); }
C10_HOST_DEVICE inline double ff_expm1(double x) { return expm1(x); }
C10_HOST_DEVICE inline float ff_log(float x) { return logf(x); }
C10_HOST_DEVICE inline double ff_log(double x) { return log(x); }
C10_HOST_DEVICE inline float ff_log1p(float x) { return log1pf(x); }
C10_HOST_DEVICE inline double ff_log1p(double x) { return log1p(x); }
C10_HOST_DEVICE inline float ff_sqrt(float x) { return sqrtf(x); }
C10_HOST_DEVICE inline double ff_sqrt(double x) { return sqrt(x); }

// min that propagates NaN from either side, like torch.minimum and amin (fmin and std::min drop it).
template <typename T>
C10_HOST_DEVICE inline T nan_min(T a, T b) {
  return (a < b || a != a) ? a : b;
}

// l(s, t) - l(s*, t) of one kind for one row, as a function of m = a^2 yn - 2 a dots, the j-dependent part of
// s = xn + m. The row holds xn and the smallest m, m0 (s* = max(xn + m0, 0)); neither s nor l is ever formed:
// s rounded as a whole costs p eps in the log-weight (xn ~ t^2 d far out at large t), l rounded costs more (at
// d = 3072, q log s ~ 7e3). The constructor hoists everything that depends only on the row; operator() is the
// per-element part. Each line mirrors split_distance and gap_log_weight in fastflow/field/logweights.py.
template <int KIND, typename acc_t>
struct GapLogWeight {
  acc_t m0;    // the row's smallest m
  acc_t neg;   // min(xn + m0, 0): a coincident point's s rounded below 0 (the clamp carries over to every s)
  acc_t s0;    // s* = max(xn + m0, 0)
  acc_t t;     // the row's time
  acc_t np;    // -p
  acc_t q;     // exponent of s in the radial kinds
  acc_t den;   // max(t * t + s0, TINY) (POISSON)
  acc_t r0;    // sqrt(s0) (radial kinds)
  acc_t g0;    // log1p(exp(-2 sqrt(s0) / t)) (TANH)
  acc_t sc0;   // max(s0, TINY) (radial kinds)

  C10_HOST_DEVICE GapLogWeight(acc_t xn, acc_t m0_, acc_t t_, acc_t p, acc_t q_)
      : m0(m0_), neg(0), s0(0), t(t_), np(-p), q(q_), den(0), r0(0), g0(0), sc0(0) {
    const acc_t s0_raw = xn + m0_;
    neg = s0_raw < acc_t(0) ? s0_raw : acc_t(0);
    s0 = s0_raw < acc_t(0) ? acc_t(0) : s0_raw;  // keeps NaN, like clamp_min
    const acc_t d0 = t_ * t_ + s0;
    den = d0 < acc_t(kTiny) ? acc_t(kTiny) : d0;
    r0 = ff_sqrt(s0);
    sc0 = s0 < acc_t(kTiny) ? acc_t(kTiny) : s0;
    if constexpr (KIND == kTanh) g0 = ff_log1p(ff_exp(acc_t(-2) * (r0 / t_)));
  }

  // The gap g = s - s* >= 0 of an element with j-dependent part m >= m0; NaN in m propagates.
  C10_HOST_DEVICE acc_t gap(acc_t m) const {
    const acc_t g = (m - m0) + neg;
    return g < acc_t(0) ? acc_t(0) : g;
  }

  // l(xn + m) - l(s*) <= 0 for m >= m0.
  C10_HOST_DEVICE acc_t operator()(acc_t m) const {
    const acc_t g = gap(m);
    if constexpr (KIND == kPoisson) {
      return np * ff_log1p(g / den);
    } else if constexpr (KIND == kGaussian) {
      return np * ((g / t) / t);  // not / t^2, which underflows in float32 at t = 1e-30
    } else {
      const acc_t s = s0 + g;
      const acc_t r = ff_sqrt(s);
      const acc_t u = r / t;
      // u - u0 from the gap: at small t, u ~ 1e3 and the difference of the rounded u's would lose 3 digits
      const acc_t r_sum = r + r0;
      const acc_t du = r_sum > 0 ? g / (t * r_sum) : acc_t(0);
      acc_t d_log_dpsi;
      if constexpr (KIND == kTanh) {
        // log sech^2(u) = -2 (u + log1p(exp(-2u)) - log 2): finite for every u >= 0 (log 2 cancels here)
        d_log_dpsi = acc_t(-2) * (du + ff_log1p(ff_exp(acc_t(-2) * u)) - g0);
      } else {
        d_log_dpsi = -du;
      }
      if (q == acc_t(0)) return d_log_dpsi;  // d = 1: no power of s
      // log(max(s, TINY) / max(s0, TINY)): the numerator of the relative gap is g unless s0 is clamped
      const acc_t sc = s < acc_t(kTiny) ? acc_t(kTiny) : s;  // a NaN s stays NaN
      const acc_t num = s0 >= acc_t(kTiny) ? g : sc - acc_t(kTiny);
      const acc_t rgap = num / sc0;
      // The relative gap overflows in float when s* = 0 (a query on a reference point) and s > 4: log1p(inf)
      // would give the weight 0, as the specification does in float32, where it is (s / TINY)^-q, which float32
      // still represents for q <= 1 (d <= 3). log(sc) - log(sc0) is accurate there (the logs are far apart).
      const acc_t log_ratio = isinf(rgap) ? ff_log(sc) - ff_log(sc0) : ff_log1p(rgap);
      return d_log_dpsi - q * log_ratio;
    }
  }

  // An m beyond which (*this)(m) < e_min < 0 for certain, found by inverting the formula for the gap (for the
  // radial kinds, each of the two terms, both <= 0, bounds the sum); +inf where there is no bound. With e_min
  // below the output dtype's underflow, the weights of all m > m_cut are exactly 0 and need no transcendentals:
  // at d = 3072 that is most of a chunk. NaN parameters give NaN, which no comparison passes.
  C10_HOST_DEVICE acc_t m_cut(acc_t e_min) const {
    const acc_t inf = acc_t(1) / acc_t(0);
    acc_t g_cut;
    if constexpr (KIND == kPoisson) {
      if (!(np < 0)) return inf;
      g_cut = den * ff_expm1(e_min / np);  // np log1p(g / den) < e_min
    } else if constexpr (KIND == kGaussian) {
      if (!(np < 0)) return inf;
      g_cut = (t * t) * (e_min / np);  // np g / t^2 < e_min
    } else {
      // d_log_dpsi < e_min: -(u - u0) for EXP; -2 ((u - u0) + log1p(e^{-2u}) - g0) <= -2 (u - u0) + 2 g0 for TANH
      const acc_t u0 = r0 / t;
      const acc_t u_cut = KIND == kTanh ? u0 + g0 - e_min / 2 : u0 - e_min;
      const acc_t s_u = (t * u_cut) * (t * u_cut);
      // -q log(max(s, TINY) / sc0) < e_min, i.e. s > sc0 exp(-e_min / q)
      const acc_t s_q = q > 0 ? sc0 * ff_exp(-e_min / q) : inf;
      g_cut = (s_u < s_q ? s_u : s_q) - s0;
    }
    return m0 - neg + g_cut;  // gap(m) > g_cut
  }
};

// Calls f(std::integral_constant<int, KIND>{}) for the runtime kind, so that each kernel is instantiated once per
// kind with the kind's branch resolved at compile time (host code; the caller has validated kind).
template <typename F>
inline void dispatch_kind(int64_t kind, F&& f) {
  switch (kind) {
    case kPoisson: f(std::integral_constant<int, kPoisson>{}); break;
    case kGaussian: f(std::integral_constant<int, kGaussian>{}); break;
    case kTanh: f(std::integral_constant<int, kTanh>{}); break;
    default: f(std::integral_constant<int, kExp>{}); break;
  }
}

}  // namespace fastflow
