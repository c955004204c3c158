// CPU kernel of fastflow::sinkhorn_lse, the log-sum-exp of a log-domain Sinkhorn iteration (specification:
// sinkhorn_lse_reference in fastflow/ot.py; the iteration itself is fastflow.ot.sinkhorn):
//
//   dim = 1:  out_i = LSE_j (h_j - scale C_ij)   (h (R,), out (B,))
//   dim = 0:  out_j = LSE_i (h_i - scale C_ij)   (h (B,), out (R,))
//
// on a float64 cost C (B, R), in float64 throughout. torch's logsumexp needs ~4 passes over B R for this (the
// shift, the scale, the max, the exp-sum); here it is one read of C per row (dim = 1: z kept in an L1 row buffer for
// the max and then the sum) or one read of each 16-row block per column tile (dim = 0: the block's max per column,
// a rescale of the running sums, then the sum; the block stays in L1/L2), with exp computed by the branch-free
// polynomial below so that the loops vectorise.
//
// exp_nonpositive: x <= 0 is what an LSE shifted by its max evaluates. x = k ln2 + r, |r| <= ln2 / 2, k rounded to
// nearest by the 1.5 2^52 trick (no float -> int conversion, which AVX2 lacks for int64), ln2 split in two
// (Cody-Waite: k ln2_hi is exact for |k| < 2^11), exp(r) by its Taylor polynomial to degree 13 (truncation
// < 4e-18 relative), 2^k put into the exponent bits. Measured against glibc's exp over [-708, 0]: <= 2 ulp
// (tests/test_ot.py compares the op's results with torch.logsumexp). x below -708 is clamped there: exp(-708) ~
// 3e-308 is still a normal number, and next to the max's term 1 it is nothing.
//
// Sums are compensated (Kahan) and, with the maxima, kept in fixed lanes (dim = 1: element j adds into lane j mod 8; dim = 0: one running value per
// column, rows in order), so that the result does not depend on the SIMD width (simd.h) or on the thread count,
// which only decides who computes which rows or column tiles.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace fastflow {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kColTile = 256;   // columns per task of dim = 0 (running max and sum on the stack: 4 KiB)
constexpr int64_t kRowBlock = 16;   // rows per block of dim = 0 (16 x 256 doubles = 32 KiB)
constexpr double kExpFloor = -708.0;

FASTFLOW_INLINE double bits_to_double(int64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

FASTFLOW_INLINE int64_t double_to_bits(double d) {
  int64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// exp(x) for x <= 0 (x < -708 is taken as -708; x = NaN gives NaN): header comment.
FASTFLOW_INLINE double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer held in the low bits
  constexpr double kLn2Hi = 6.93147180369123816490e-01;
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  x = x < kExpFloor ? kExpFloor : x;
  const double kd = x * kLog2e + kMagic;
  const int64_t k = double_to_bits(kd) - double_to_bits(kMagic);
  const double kf = kd - kMagic;
  const double r = (x - kf * kLn2Hi) - kf * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1 / 13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  return p * bits_to_double((k + 1023) << 52);
}

// s + comp_out = s + comp_in + x, compensated (Kahan): comp holds what the rounded s lost, with its sign reversed.
// The sums are of up to R terms in [0, 1]; uncompensated they lose ~R/8 ulp (1e-14 at R = 1024), compensated ~2 ulp.
FASTFLOW_INLINE void kahan_add(double& s, double& comp, double x) {
  const double y = x - comp;
  const double t = s + y;
  comp = (t - s) - y;
  s = t;
}

// dim = 1 on rows [i0, i1): z = h - scale C_i. into the row buffer (and its max in 8 lanes), then the sum of exp(z - m).
FASTFLOW_CLONES void lse_rows(const double* __restrict__ C, const double* __restrict__ h, double scale, int64_t R,
                              int64_t i0, int64_t i1, double* __restrict__ z, double* __restrict__ out) {
  const int64_t R8 = R - R % kLanes;
  for (int64_t i = i0; i < i1; ++i) {
    const double* __restrict__ row = C + i * R;
    double mx[kLanes];
    for (int l = 0; l < kLanes; ++l) mx[l] = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < R8; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const double v = h[j + l] - scale * row[j + l];
        z[j + l] = v;
        mx[l] = v > mx[l] ? v : mx[l];
      }
    }
    for (int64_t j = R8; j < R; ++j) {
      const double v = h[j] - scale * row[j];
      z[j] = v;
      mx[j - R8] = v > mx[j - R8] ? v : mx[j - R8];
    }
    double m = mx[0];
    for (int l = 1; l < kLanes; ++l) m = mx[l] > m ? mx[l] : m;
    double s[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    double comp[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < R8; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) kahan_add(s[l], comp[l], exp_nonpositive(z[j + l] - m));
    }
    for (int64_t j = R8; j < R; ++j) kahan_add(s[j - R8], comp[j - R8], exp_nonpositive(z[j] - m));
    double total = 0.0, tc = 0.0;
    for (int l = 0; l < kLanes; ++l) kahan_add(total, tc, s[l] - comp[l]);
    out[i] = m + std::log(total);
  }
}

// dim = 0 on the columns [j0, j1) (at most kColTile): rows in blocks of kRowBlock; per block the max of z per
// column, the running sums rescaled to the new max, then the block's exp(z - m) added.
FASTFLOW_CLONES void lse_cols(const double* __restrict__ C, const double* __restrict__ h, double scale, int64_t B,
                              int64_t R, int64_t j0, int64_t j1, double* __restrict__ out) {
  const int64_t n = j1 - j0;
  double m[kColTile], s[kColTile], comp[kColTile], bm[kColTile];
  for (int64_t j = 0; j < n; ++j) {
    m[j] = -std::numeric_limits<double>::infinity();
    s[j] = 0.0;
    comp[j] = 0.0;
  }
  for (int64_t b0 = 0; b0 < B; b0 += kRowBlock) {
    const int64_t b1 = b0 + kRowBlock < B ? b0 + kRowBlock : B;
    for (int64_t j = 0; j < n; ++j) bm[j] = -std::numeric_limits<double>::infinity();
    for (int64_t i = b0; i < b1; ++i) {
      const double* __restrict__ row = C + i * R + j0;
      const double hi = h[i];
      for (int64_t j = 0; j < n; ++j) {
        const double v = hi - scale * row[j];
        bm[j] = v > bm[j] ? v : bm[j];
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const double mn = bm[j] > m[j] ? bm[j] : m[j];
      const double scale_j = exp_nonpositive(m[j] - mn);  // m = -inf on the first block: s = 0 times exp(-708)
      s[j] *= scale_j;
      comp[j] *= scale_j;
      m[j] = mn;
    }
    for (int64_t i = b0; i < b1; ++i) {
      const double* __restrict__ row = C + i * R + j0;
      const double hi = h[i];
      for (int64_t j = 0; j < n; ++j) kahan_add(s[j], comp[j], exp_nonpositive((hi - scale * row[j]) - m[j]));
    }
  }
  for (int64_t j = 0; j < n; ++j) out[j0 + j] = m[j] + std::log(s[j] - comp[j]);
}

at::Tensor sinkhorn_lse_cpu(const at::Tensor& C, const at::Tensor& h, double scale, int64_t dim) {
  constexpr const char* op = "fastflow::sinkhorn_lse";
  TORCH_CHECK(dim == 0 || dim == 1, op, ": dim must be 0 (over rows) or 1 (over columns); got ", dim);
  TORCH_CHECK(C.dim() == 2 && C.scalar_type() == at::kDouble && C.is_contiguous(), op,
              ": the cost must be a contiguous 2-D float64 tensor; got ", C.scalar_type(), " of shape ", C.sizes(),
              " with strides ", C.strides());
  const int64_t B = C.size(0);
  const int64_t R = C.size(1);
  const int64_t n = dim == 1 ? R : B;
  TORCH_CHECK(h.dim() == 1 && h.size(0) == n && h.scalar_type() == at::kDouble && h.is_contiguous() &&
                  h.device() == C.device(),
              op, ": h must be a contiguous (", n, ",) float64 tensor on the cost's device; got ", h.scalar_type(),
              " of shape ", h.sizes(), " on ", h.device());
  TORCH_CHECK(B >= 1 && R >= 1, op, ": the cost must be non-empty; got shape ", C.sizes());
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite; got ", scale);
  at::Tensor out = at::empty({dim == 1 ? B : R}, C.options());
  const double* Cp = C.data_ptr<double>();
  const double* hp = h.data_ptr<double>();
  double* op_ = out.data_ptr<double>();
  if (dim == 1) {
    const int64_t grain = std::max<int64_t>(1, 32768 / R);
    at::parallel_for(0, B, grain, [&](int64_t i0, int64_t i1) {
      std::vector<double> z(R);
      lse_rows(Cp, hp, scale, R, i0, i1, z.data(), op_);
    });
  } else {
    const int64_t tiles = (R + kColTile - 1) / kColTile;
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        lse_cols(Cp, hp, scale, B, R, t * kColTile, std::min(R, (t + 1) * kColTile), op_);
      }
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CPU, m) { m.impl("sinkhorn_lse", &sinkhorn_lse_cpu); }

}  // namespace fastflow
