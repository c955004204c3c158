// CPU kernel of fastflow::field_step_: one streaming step of the field's online softmax over a chunk of C
// reference points (specification: online_step_torch in fastflow/field/torch_backend.py).
//
// Rows are independent and each is processed start to finish by one thread, so the result does not depend on
// the number of threads.
//
// All arithmetic is in double, also for float32 inputs: at t = 1e-2 the Gaussian exponent is
// p (s - s0) / t^2 = 5e3 (s - s0), so float32's rounding of a gap s - s0 ~ 128 (up to 8e-6) alone would move a
// weight by up to 4%; in double, the float32 op returns the specification evaluated on its float32 inputs,
// rounded once. The running m* (the j-dependent part of the smallest s, see field_math.h) is then stored rounded
// to float32 while this chunk's weights are relative to the unrounded m*: the next chunk's alpha carries that
// rounding, eps |m*|, which is of the order of the float32 GEMM's own error in the dots.
//
// The loops are scalar (glibc's exp / log1p, not torch's SIMD ones), but weights that underflow are skipped
// (GapLogWeight::m_cut): at d = 3072 most of a chunk, where this beats the torch specification several times.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "field_math.h"

namespace fastflow {
namespace {

using acc_t = double;

// Exponents below which a weight rounds to 0 in the output dtype, with a margin for the rounding of the cut
// itself: float32's smallest subnormal is e^-103.3, float64's e^-744.4.
template <typename scalar_t>
constexpr acc_t kExpUnderflow = std::is_same_v<scalar_t, float> ? -110.0 : -760.0;

// Work per at::parallel_for task, in elements: an element costs up to ~25 ns (a few transcendental calls), so
// 4096 elements (~0.1 ms) amortise the task overhead while still splitting a 256 x 64 chunk across threads.
constexpr int64_t kGrainElems = 4096;

template <typename scalar_t, int KIND>
void field_step_cpu_kernel(const at::Tensor& dots, const at::Tensor& xn, const at::Tensor& yn, const at::Tensor& t,
                           const at::Tensor& a, const at::Tensor& mmin, const at::Tensor& jmin, const at::Tensor& l,
                           const at::Tensor& l2, const at::Tensor& alpha, int64_t offset, double p, double q) {
  const int64_t B = dots.size(0);
  const int64_t C = dots.size(1);
  scalar_t* D = dots.mutable_data_ptr<scalar_t>();
  const scalar_t* XN = xn.const_data_ptr<scalar_t>();
  const scalar_t* YN = yn.const_data_ptr<scalar_t>();
  const scalar_t* T = t.const_data_ptr<scalar_t>();
  const scalar_t* A = a.const_data_ptr<scalar_t>();
  scalar_t* MMIN = mmin.mutable_data_ptr<scalar_t>();
  int64_t* JMIN = jmin.mutable_data_ptr<int64_t>();
  scalar_t* L = l.mutable_data_ptr<scalar_t>();
  scalar_t* L2 = l2.mutable_data_ptr<scalar_t>();
  scalar_t* ALPHA = alpha.mutable_data_ptr<scalar_t>();
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElems / C);

  at::parallel_for(0, B, grain_rows, [&](int64_t begin, int64_t end) {
    // The row's m_ij between the two passes: in place in the row for float64; for float32 a double scratch
    // row, since rounding m to float32 is exactly the error the double arithmetic avoids.
    std::vector<acc_t> scratch(std::is_same_v<scalar_t, acc_t> ? 0 : C);
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* row = D + i * C;
      acc_t* m_row;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        m_row = row;
      } else {
        m_row = scratch.data();
      }
      const acc_t a_i = A[i];
      const acc_t a2 = a_i * a_i;
      const acc_t m2a = acc_t(-2) * a_i;

      // Pass 1: m_ij = a_i^2 yn_j - 2 a_i dots_ij (the addcmul of the specification), and the chunk's smallest
      // m with its column: the first one on ties and the first NaN if any, like torch.min(dim=1).
      acc_t m_chunk = std::numeric_limits<acc_t>::infinity();
      int64_t j_chunk = 0;
      for (int64_t j = 0; j < C; ++j) {
        const acc_t m = a2 * acc_t(YN[j]) + m2a * acc_t(row[j]);
        m_row[j] = m;
        if (m < m_chunk || (std::isnan(m) && !std::isnan(m_chunk))) {
          m_chunk = m;
          j_chunk = j;
        }
      }
      const acc_t m_old = MMIN[i];
      const acc_t m_new = nan_min(m_old, m_chunk);
      if (m_chunk < m_old) JMIN[i] = j_chunk + offset;  // strict: on a tie the earlier chunk's point stays
      const GapLogWeight<KIND, acc_t> rel(acc_t(XN[i]), m_new, acc_t(T[i]), acc_t(p), acc_t(q));
      const acc_t m_cut = rel.m_cut(kExpUnderflow<scalar_t>);

      // Pass 2: w_ij = exp(l(s_ij) - l(s*_new)) <= 1, and the sums of w and w^2 over what is stored (the
      // rounded weights are what the caller multiplies into its running weighted sum). Beyond m_cut the weight
      // is 0 in the output dtype, without evaluating it.
      acc_t sum = 0;
      acc_t sum2 = 0;
      for (int64_t j = 0; j < C; ++j) {
        const scalar_t w = m_row[j] > m_cut ? scalar_t(0) : static_cast<scalar_t>(ff_exp(rel(m_row[j])));
        row[j] = w;
        sum += acc_t(w);
        sum2 += acc_t(w) * acc_t(w);
      }
      // alpha rescales the previous chunks' sums to the new s*; the first chunk (m_old = inf) has none.
      const acc_t al = std::isinf(m_old) ? acc_t(0) : ff_exp(rel(m_old));
      L[i] = static_cast<scalar_t>(acc_t(L[i]) * al + sum);
      L2[i] = static_cast<scalar_t>(acc_t(L2[i]) * (al * al) + sum2);
      MMIN[i] = static_cast<scalar_t>(m_new);
      ALPHA[i] = static_cast<scalar_t>(al);
    }
  });
}

// CPU implementation of the schema in fastflow.cpp: dots, mmin, jmin, l, l2 are updated in place; returns
// alpha (B,).
at::Tensor field_step_cpu(const at::Tensor& dots, const at::Tensor& xn, const at::Tensor& yn, const at::Tensor& t,
                          const at::Tensor& a, const at::Tensor& mmin, const at::Tensor& jmin, const at::Tensor& l,
                          const at::Tensor& l2, int64_t offset, int64_t kind, double p, double q) {
  check_field_step_args(dots, xn, yn, t, a, mmin, jmin, l, l2, kind);
  TORCH_CHECK(dots.device().is_cpu(), "fastflow::field_step_ (CPU kernel): tensors must be on the CPU; got ",
              dots.device());
  at::Tensor alpha = at::empty_like(mmin);
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "fastflow::field_step_", [&] {
    dispatch_kind(kind, [&](auto K) {
      field_step_cpu_kernel<scalar_t, decltype(K)::value>(dots, xn, yn, t, a, mmin, jmin, l, l2, alpha, offset, p, q);
    });
  });
  return alpha;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CPU, m) { m.impl("field_step_", &field_step_cpu); }

}  // namespace fastflow
