// CPU kernel of fastflow::rk_control_, the per-sample step-size control of the adaptive Runge-Kutta solvers
// (specification: control_reference in fastflow/ode/control.py, which this must match).
//
// One pass over the n active samples replaces the ~50 small torch ops of the reference (at n = 256 on 2 cores
// ~5 us against ~200 us a step): accept or reject the trial step, the PI factor of the next step, the clock, the
// flags the solver reads back, and the next trial step (landing on t1 when within LAND_STRETCH of it).
// Arithmetic is in the time dtype T (float or double), as in the reference; pow is std::pow in T.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace fastflow {
namespace {

// status columns (bool): outputs DONE, STALLED, ACCEPT; state BAD (sticky: a trial step was ever non-finite),
// LANDS (the current trial step ends on t1), REJECTED (the last trial step was rejected).
enum Status : int64_t { kDone = 0, kStalled, kBad, kAccept, kLands, kRejected, kNumStatus };
// gains, in this order (fastflow/ode/control.py: GAINS)
enum Gain : size_t { kSafety = 0, kFacMin, kFacMax, kAlphaK, kBetaK, kInvK, kErrPrevMin, kLandStretch, kNumGains };

// One (n,) column of any floating dtype, read element by element as double (n is small: the switch is free).
struct Column {
  const void* p;
  at::ScalarType st;
  double operator[](int64_t i) const {
    switch (st) {
      case at::kDouble: return static_cast<const double*>(p)[i];
      case at::kFloat: return static_cast<const float*>(p)[i];
      case at::kHalf: return static_cast<float>(static_cast<const at::Half*>(p)[i]);
      default: return static_cast<float>(static_cast<const at::BFloat16*>(p)[i]);
    }
  }
};

template <typename T>
void rk_control_kernel(const at::Tensor& t, const at::Tensor& h, const at::Tensor& h_try, const at::Tensor& t_next,
                       const at::Tensor& err_prev, const at::Tensor& status, const at::Tensor& t1,
                       const at::Tensor& err, const at::Tensor& xmax, c10::ArrayRef<double> g) {
  const int64_t n = t.size(0);
  T* tp = t.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  T* htp = h_try.data_ptr<T>();
  T* tnp = t_next.data_ptr<T>();
  T* ep = err_prev.data_ptr<T>();
  bool* sp = status.data_ptr<bool>();
  const T* t1p = t1.data_ptr<T>();
  const Column errc{err.data_ptr(), err.scalar_type()};
  const Column xc{xmax.data_ptr(), xmax.scalar_type()};
  const T safety = T(g[kSafety]), fac_min = T(g[kFacMin]), fac_max = T(g[kFacMax]);
  const T alpha_k = T(g[kAlphaK]), beta_k = T(g[kBetaK]), inv_k = T(g[kInvK]);
  const T err_prev_min = T(g[kErrPrevMin]), land_stretch = T(g[kLandStretch]);
  for (int64_t i = 0; i < n; ++i) {
    bool* s = sp + i * kNumStatus;
    const T e_raw = T(errc[i]);
    const bool finite = std::isfinite(xc[i]) && std::isfinite(e_raw);
    const bool accept = finite && e_raw <= T(1);
    T fac;
    const T e = std::max(e_raw, T(1e-10));  // err = 0 (an exact step): the clamp to fac_max decides
    if (accept) {
      fac = std::clamp(safety * std::pow(e, -alpha_k) * std::pow(ep[i], beta_k), fac_min, fac_max);
      if (s[kRejected]) fac = std::min(fac, T(1));  // no growth right after a rejection
    } else {
      fac = finite ? std::clamp(safety * std::pow(e, -inv_k), fac_min, T(1)) : fac_min;
    }
    const T h_new = htp[i] * fac;
    if (accept) ep[i] = std::max(e_raw, err_prev_min);
    const T t_new = accept ? tnp[i] : tp[i];
    const bool done = accept && s[kLands];
    const T t_moved = t_new + h_new;  // in T: a float32 clock stalls where float32 addition does
    s[kDone] = done;
    s[kStalled] = !done && t_moved == t_new;
    s[kBad] = s[kBad] || !finite;
    s[kAccept] = accept;
    s[kRejected] = !accept;
    // the next trial step: land on t1 when it is within land_stretch steps
    const T rem = t1p[i] - t_new;
    const bool lands = std::abs(rem) <= land_stretch * std::abs(h_new);
    s[kLands] = lands;
    htp[i] = lands ? rem : h_new;
    tnp[i] = lands ? t1p[i] : T(t_new + htp[i]);
    tp[i] = t_new;
    hp[i] = h_new;
  }
}

void rk_control_cpu(const at::Tensor& t, const at::Tensor& h, const at::Tensor& h_try, const at::Tensor& t_next,
                    const at::Tensor& err_prev, const at::Tensor& status, const at::Tensor& t1, const at::Tensor& err,
                    const at::Tensor& xmax, c10::ArrayRef<double> gains) {
  constexpr const char* op = "fastflow::rk_control_";
  TORCH_CHECK(t.dim() == 1, op, ": t must be 1-D (n,); got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": t must be float32 or float64 (the time dtype); got ", t.scalar_type());
  const int64_t n = t.size(0);
  struct Col {
    const char* name;
    const at::Tensor& v;
    bool same_dtype;
  };
  for (const Col& c : {Col{"t", t, true}, Col{"h", h, true}, Col{"h_try", h_try, true}, Col{"t_next", t_next, true},
                       Col{"err_prev", err_prev, true}, Col{"t1", t1, true}, Col{"err", err, false},
                       Col{"xmax", xmax, false}}) {
    TORCH_CHECK(c.v.device().is_cpu(), op, " (CPU kernel): ", c.name, " must be on the CPU; got ", c.v.device());
    TORCH_CHECK(c.v.dim() == 1 && c.v.size(0) == n && c.v.is_contiguous(), op, ": ", c.name,
                " must be a contiguous (", n, ",) tensor; got shape ", c.v.sizes(), ", strides ", c.v.strides());
    if (c.same_dtype) {
      TORCH_CHECK(c.v.scalar_type() == t.scalar_type(), op, ": ", c.name, " must have t's dtype (",
                  t.scalar_type(), "); got ", c.v.scalar_type());
    } else {
      const at::ScalarType st = c.v.scalar_type();
      TORCH_CHECK(st == at::kDouble || st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op, ": ", c.name,
                  " must be float64, float32, float16 or bfloat16; got ", st);
    }
  }
  TORCH_CHECK(status.device().is_cpu() && status.scalar_type() == at::kBool && status.dim() == 2 &&
                  status.size(0) == n && status.size(1) == kNumStatus && status.is_contiguous(),
              op, ": status must be a contiguous (", n, ", ", int64_t(kNumStatus), ") bool tensor on the CPU; got ",
              status.sizes(), " ", status.scalar_type(), " on ", status.device());
  TORCH_CHECK(gains.size() == kNumGains, op, ": gains must hold ", int64_t(kNumGains),
              " numbers (safety, fac_min, fac_max, alpha/k, beta/k, 1/k, err_prev_min, land_stretch); got ",
              int64_t(gains.size()));
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "fastflow::rk_control_", [&] {
    rk_control_kernel<scalar_t>(t, h, h_try, t_next, err_prev, status, t1, err, xmax, gains);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CPU, m) { m.impl("rk_control_", &rk_control_cpu); }

}  // namespace fastflow
