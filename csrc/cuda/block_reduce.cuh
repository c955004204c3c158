// Block-wide all-reductions shared by the CUDA kernels (draw.cu, field_step.cu).
#pragma once

namespace fastflow {

struct SumOp {
  __device__ double operator()(double x, double y) const { return x + y; }
};

__device__ inline double shfl_xor(double v, int lane_mask) { return __shfl_xor_sync(0xffffffffu, v, lane_mask); }

// Reduces v over a block of kWarps warps and returns the result to every thread. smem holds kWarps partials; the
// trailing __syncthreads lets the caller reuse it for the next reduction. Every thread combines the warp partials
// in the same order, so all threads see the same value, and the result is the same from run to run. A type other
// than double needs a shfl_xor overload found by argument-dependent lookup.
template <int kWarps, typename T, typename Op>
__device__ T block_allreduce(T v, Op op, T* smem) {
  for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) v = op(v, shfl_xor(v, lane_mask));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T r = smem[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, smem[w]);
  __syncthreads();
  return r;
}

}  // namespace fastflow
