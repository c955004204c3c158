// CUDA kernel of fastflow::draw_, the fused sampler (specification and CPU kernel: draw.cpp).
//
// One thread block per row; thread t draws the groups of 4 elements t, t + kThreads, ... of its row from their own
// Philox counters, so every element's bits are those of the CPU kernel whatever the launch shape. The Gaussians
// are in the output dtype (float32: libdevice's logf and sincospif, within 1-2 ulp of the CPU's polynomials, so
// g can differ from the CPU's in the last bits), rho and ||g|| in double. ||g||^2 is a block reduction of a fixed
// shape: deterministic from run to run, but summed in another order than on the CPU (a last-ulp difference of
// rho); kind 1's 1 / ||h|| is the CPU's function, computed by every thread of the row. Kinds 2/3 store g in out on pass 1, and pass 2 re-reads the elements the same thread wrote (no barrier).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h, which pulls in cuBLAS and cuSPARSE headers
#include <torch/library.h>

#include <limits>
#include <optional>

#include "../checks.h"
#include "../draw_math.h"
#include "../philox.h"
#include "block_reduce.cuh"

namespace fastflow {
namespace {

// 8 warps per row: a row of a few thousand elements keeps enough stores in flight to stream, and 1000 rows
// fill an H100's 132 SMs several times over.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;


template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) draw_kernel(
    scalar_t* __restrict__ out,       // (n, d) out: a_i x0_i + scale_i rho_i g_i
    const scalar_t* __restrict__ x0,  // (n, d) or nullptr
    const double* __restrict__ a,     // (n,) factor of x0
    const double* __restrict__ scale, // (n,) noise scale
    int64_t d,                        // row length
    const int64_t* __restrict__ seed_ptr,  // (1,) the Philox key, read here: the host never waits for it
    uint32_t offset,                  // Philox counter word 2
    int kind,                         // radius kind (draw_math.h)
    double D) {                       // kind 1: the dimension of h (a real > 0)
  __shared__ double smem[kWarps];
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t i = blockIdx.x;
  const uint32_t row = static_cast<uint32_t>(i);
  scalar_t* o = out + i * d;
  const scalar_t* x = x0 == nullptr ? nullptr : x0 + i * d;
  const double a_i = a[i];
  const int64_t groups = (d + 3) / 4;
  double rho = 1.0;
  // Every thread computes the row's factor itself (a few Philox calls, the same in every thread, so no barrier
  // and no divergence): the same function and counters as on the CPU.
  if (kind == kRadiusChi) rho = inverse_chi(D, seed, row, offset);

  if (radius_needs_norm(kind)) {
    double ss = 0;
    for (int64_t q = threadIdx.x; q < groups; q += kThreads) {
      scalar_t z[4];
      philox::normal4<scalar_t>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamG, z);
      const int64_t m = d - 4 * q < 4 ? d - 4 * q : 4;
      for (int64_t k = 0; k < m; ++k) {
        o[4 * q + k] = z[k];
        ss += double(z[k]) * double(z[k]);
      }
    }
    ss = block_allreduce<kWarps>(ss, SumOp{}, smem);
    rho = radial_inverse_cdf(kind, seed, row, offset) / sqrt(ss);
    const double c = scale[i] * rho;
    for (int64_t q = threadIdx.x; q < groups; q += kThreads) {
      const int64_t m = d - 4 * q < 4 ? d - 4 * q : 4;
      for (int64_t k = 0; k < m; ++k) {
        const int64_t j = 4 * q + k;
        const double v = c * double(o[j]);
        o[j] = static_cast<scalar_t>(x == nullptr ? v : a_i * double(x[j]) + v);
      }
    }
    return;
  }

  const double c = scale[i] * rho;
  for (int64_t q = threadIdx.x; q < groups; q += kThreads) {
    scalar_t z[4];
    philox::normal4<scalar_t>(seed, static_cast<uint32_t>(q), row, offset, philox::kStreamG, z);
    const int64_t m = d - 4 * q < 4 ? d - 4 * q : 4;
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = 4 * q + k;
      const double v = c * double(z[k]);
      o[j] = static_cast<scalar_t>(x == nullptr ? v : a_i * double(x[j]) + v);
    }
  }
}

// CUDA implementation of the schema in fastflow.cpp: fills out in place.
void draw_cuda(const at::Tensor& out, const std::optional<at::Tensor>& x0, const at::Tensor& a,
               const at::Tensor& scale, const at::Tensor& seed, int64_t offset, int64_t radius_kind,
               double radius_param) {
  check_draw_args(out, x0, a, scale, seed, offset, radius_kind, radius_param);
  TORCH_CHECK(out.device().is_cuda(), "fastflow::draw_ (CUDA kernel): tensors must be on a CUDA device; got ",
              out.device());
  // gridDim.x is limited to 2^31 - 1 blocks (one per row).
  TORCH_CHECK(out.size(0) <= std::numeric_limits<int>::max(), "fastflow::draw_: at most 2^31 - 1 rows per call "
              "on CUDA; got ", out.size(0));
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fastflow::draw_", [&] {
    draw_kernel<scalar_t><<<static_cast<unsigned int>(out.size(0)), kThreads, 0,
                            c10::cuda::getCurrentCUDAStream()>>>(
        out.mutable_data_ptr<scalar_t>(), x0.has_value() ? x0->const_data_ptr<scalar_t>() : nullptr,
        a.const_data_ptr<double>(), scale.const_data_ptr<double>(), out.size(1), seed.const_data_ptr<int64_t>(),
        static_cast<uint32_t>(offset), static_cast<int>(radius_kind), radius_param);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastflow, CUDA, m) { m.impl("draw_", &draw_cuda); }

}  // namespace fastflow
