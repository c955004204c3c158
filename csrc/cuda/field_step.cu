// CUDA kernel of fastflow::field_step_: one streaming step of the field's online softmax over a chunk of C
// reference points (specification: online_step_torch in fastflow/field/torch_backend.py).
//
// One thread block per row: pass 1 writes m_ij = a^2 yn_j - 2 a dots_ij (the j-dependent part of the squared
// distance s_ij = xn_i + m_ij, field_math.h) into the row and reduces their minimum and its column, pass 2 overwrites them with the weights and reduces the sums. The arithmetic is in the input dtype
// (float32 follows the specification's float32 data flow: double exp/log1p are software sequences, tens of
// times slower than the float ones on the GPU), the row sums in double. The reductions have a fixed shape, so
// the results do not depend on scheduling.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h, which pulls in cuBLAS and cuSPARSE headers
#include <math_constants.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "../field_math.h"
#include "block_reduce.cuh"

namespace fastflow {
namespace {

// 8 warps per row: enough loads in flight to stream a row of a few thousand elements, and small enough that
// rows of a few hundred elements (small chunks) keep most threads busy.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ inline float infinity(float) { return CUDART_INF_F; }
__device__ inline double infinity(double) { return CUDART_INF; }

// A candidate for the row's smallest m (smallest squared distance): its value and column.
template <typename scalar_t>
struct ArgMin {
  scalar_t s;
  int64_t j;
};

// The smaller s, NaN before any number (torch.min propagates NaN), the lower column on ties: the block's result
// is then the first minimal column, as torch.min(dim=1) returns on the CPU, whatever the reduction order.
struct ArgMinOp {
  template <typename scalar_t>
  __device__ ArgMin<scalar_t> operator()(ArgMin<scalar_t> x, ArgMin<scalar_t> y) const {
    const bool x_nan = isnan(x.s);
    const bool y_nan = isnan(y.s);
    if (x_nan != y_nan) return x_nan ? x : y;
    if (!x_nan && x.s != y.s) return x.s < y.s ? x : y;
    return x.j <= y.j ? x : y;
  }
};
template <typename scalar_t>
__device__ ArgMin<scalar_t> shfl_xor(ArgMin<scalar_t> v, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, v.s, lane_mask),
          static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(v.j), lane_mask))};
}


template <typename scalar_t, int KIND>
__global__ void __launch_bounds__(kThreads) field_step_kernel(
    scalar_t* __restrict__ dots,      // (B, C) in: x_c . y_c; out: weights exp(l(s_ij) - l(s*_i))
    const scalar_t* __restrict__ xn,  // (B,) ||x_i - a_i c||^2
    const scalar_t* __restrict__ yn,  // (C,) ||y_j - c||^2
    const scalar_t* __restrict__ t,   // (B,) time
    const scalar_t* __restrict__ a,   // (B,) path scale
    scalar_t* __restrict__ mmin,      // (B,) running smallest m (inf before the first chunk)
    int64_t* __restrict__ jmin,       // (B,) reference index of mmin
    scalar_t* __restrict__ l,         // (B,) running sum of weights
    scalar_t* __restrict__ l2,        // (B,) running sum of squared weights
    scalar_t* __restrict__ alpha,     // (B,) out: rescaling factor of the previous chunks
    int64_t C,                        // row length
    int64_t offset,                   // reference index of the chunk's first column
    scalar_t p, scalar_t q) {         // log-weight parameters (fastflow/field/logweights.py)
  __shared__ ArgMin<scalar_t> smem_min[kWarps];
  __shared__ double smem_sum[kWarps];
  const int64_t i = blockIdx.x;
  scalar_t* row = dots + i * C;
  const scalar_t a_i = a[i];
  const scalar_t a2 = a_i * a_i;
  const scalar_t m2a = scalar_t(-2) * a_i;

  // Pass 1: m_ij = a_i^2 yn_j - 2 a_i dots_ij, stored in the row, and the chunk's smallest m with its column. A
  // thread without columns contributes (inf, C), which loses every comparison.
  ArgMin<scalar_t> part{infinity(scalar_t(0)), C};
  for (int64_t j = threadIdx.x; j < C; j += kThreads) {
    const scalar_t m = a2 * yn[j] + m2a * row[j];
    row[j] = m;
    part = ArgMinOp{}(part, ArgMin<scalar_t>{m, j});
  }
  const ArgMin<scalar_t> chunk = block_allreduce<kWarps>(part, ArgMinOp{}, smem_min);
  const scalar_t m_old = mmin[i];
  const scalar_t m_new = nan_min(m_old, chunk.s);
  const GapLogWeight<KIND, scalar_t> rel(xn[i], m_new, t[i], p, q);

  // Pass 2: each thread reads back the elements it wrote in pass 1, so no barrier is needed between passes.
  double sum = 0;
  double sum2 = 0;
  for (int64_t j = threadIdx.x; j < C; j += kThreads) {
    const scalar_t w = ff_exp(rel(row[j]));
    row[j] = w;
    sum += double(w);
    sum2 += double(w) * double(w);
  }
  sum = block_allreduce<kWarps>(sum, SumOp{}, smem_sum);
  sum2 = block_allreduce<kWarps>(sum2, SumOp{}, smem_sum);

  if (threadIdx.x == 0) {
    // The first chunk (m_old = inf) has no previous sums to rescale.
    const scalar_t al = isinf(m_old) ? scalar_t(0) : ff_exp(rel(m_old));
    l[i] = static_cast<scalar_t>(double(l[i]) * double(al) + sum);
    l2[i] = static_cast<scalar_t>(double(l2[i]) * double(al * al) + sum2);
    mmin[i] = m_new;
    if (chunk.s < m_old) jmin[i] = chunk.j + offset;  // strict: on a tie the earlier chunk's point stays
    alpha[i] = al;
  }
}

template <typename scalar_t, int KIND>
void launch(const at::Tensor& dots, const at::Tensor& xn, const at::Tensor& yn, const at::Tensor& t,
            const at::Tensor& a, const at::Tensor& mmin, const at::Tensor& jmin, const at::Tensor& l,
            const at::Tensor& l2, const at::Tensor& alpha, int64_t offset, double p, double q) {
  const int64_t B = dots.size(0);
  const int64_t C = dots.size(1);
  field_step_kernel<scalar_t, KIND><<<static_cast<unsigned int>(B), kThreads, 0,
                                      c10::cuda::getCurrentCUDAStream()>>>(
      dots.mutable_data_ptr<scalar_t>(), xn.const_data_ptr<scalar_t>(), yn.const_data_ptr<scalar_t>(),
      t.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), mmin.mutable_data_ptr<scalar_t>(),
      jmin.mutable_data_ptr<int64_t>(), l.mutable_data_ptr<scalar_t>(), l2.mutable_data_ptr<scalar_t>(),
      alpha.mutable_data_ptr<scalar_t>(), C, offset, static_cast<scalar_t>(p), static_cast<scalar_t>(q));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// CUDA implementation of the schema in fastflow.cpp: dots, mmin, jmin, l, l2 are updated in place; returns
// alpha (B,).
at::Tensor field_step_cuda(const at::Tensor& dots, const at::Tensor& xn, const at::Tensor& yn, const at::Tensor& t,
                           const at::Tensor& a, const at::Tensor& mmin, const at::Tensor& jmin, const at::Tensor& l,
                           const at::Tensor& l2, int64_t offset, int64_t kind, double p, double q) {
  check_field_step_args(dots, xn, yn, t, a, mmin, jmin, l, l2, kind);
  TORCH_CHECK(dots.device().is_cuda(), "fastflow::field_step_ (CUDA kernel): tensors must be on a CUDA device; got ",
              dots.device());
  // gridDim.x is limited to 2^31 - 1 blocks (one per row).
  TORCH_CHECK(dots.size(0) <= std::numeric_limits<int>::max(),
              "fastflow::field_step_: at most 2^31 - 1 rows per call; got ", dots.size(0));
  const c10::cuda::CUDAGuard guard(dots.device());
  at::Tensor alpha = at::empty_like(mmin);
  if (dots.size(0) == 0) return alpha;
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "fastflow::field_step_", [&] {
    dispatch_kind(kind, [&](auto K) {
      launch<scalar_t, decltype(K)::value>(dots, xn, yn, t, a, mmin, jmin, l, l2, alpha, offset, p, q);
    });
  });
  return alpha;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CUDA, m) { m.impl("field_step_", &field_step_cuda); }

}  // namespace fastflow
