// Counter-based Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011), written from the published algorithm, and the maps from its 32-bit words to uniforms and Gaussians
// used by fastflow::draw_ (draw.cpp, cuda/draw.cu).
//
// Every function is C10_HOST_DEVICE and pure integer arithmetic up to the uniforms, so a (key, counter) pair gives
// the same 128 bits on the CPU and on any GPU, whatever the number of threads: each output element is a function
// of its own coordinates only. The uniforms are exact (no rounding: they are odd multiples of 2^-24, 2^-33 or
// 2^-53), so they are bitwise equal on every device too. The Gaussians then go through log, sqrt, sin and cos,
// which differ by an ulp or two between glibc and CUDA's libdevice (CUDA documents logf 1 ulp, sinf/cosf 2 ulp,
// log/sin/cos 1-2 ulp in double); that is the only source of difference between devices.
//
// The reference for the tests is a numpy transcription in tests/test_draw_ext.py, checked against the published
// known-answer vectors of Random123 (kat_vectors).
#pragma once

#include <math.h>

#include <cstdint>

#include <c10/macros/Macros.h>

namespace fastflow {
namespace philox {

// The round multipliers and the Weyl-sequence key increments of Philox4x32 (Random123's PHILOX_M4x32_0/1 and
// PHILOX_W32_0/1).
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;
constexpr int kRounds = 10;

// Streams of one (seed, offset): the counter's 4th word, so that the Gaussians g of a row, the D Gaussians h of
// its PFGM++ radius and its radial-CDF uniform U never share a counter.
enum Stream : uint32_t { kStreamG = 0, kStreamH = 1, kStreamU = 2 };

struct U32x4 {
  uint32_t x, y, z, w;
};

C10_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32-10: 10 rounds of (two 32x32->64 multiplies, xor with the key), the key bumped by the Weyl constants
// between rounds. ctr = (c0, c1, c2, c3), key = (k0, k1).
C10_HOST_DEVICE inline U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    if (r > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c.x, hi0, lo0);
    mulhilo(kMul1, c.z, hi1, lo1);
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
  }
  return c;
}

// The 128 bits of group `group` (elements 4 group .. 4 group + 3) of row `row`: counter (group, row, offset,
// stream), key = the 64-bit seed (low word, high word).
C10_HOST_DEVICE inline U32x4 bits(uint64_t seed, uint32_t group, uint32_t row, uint32_t offset, uint32_t stream) {
  return philox4x32_10(U32x4{group, row, offset, stream}, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// Uniforms in the open interval (0, 1), exactly representable, so never 0 (log u finite) nor 1 (atanh finite).
// float: the top 23 bits k give (2k + 1) 2^-24 in [2^-24, 1 - 2^-24] (an odd 24-bit integer: exact in float,
// where (k + 0.5) 2^-32 with 32 bits would round to 1.0 for the top 2^7 values of k).
// double: all 32 bits, (2k + 1) 2^-33 = (k + 0.5) 2^-32, in [2^-33, 1 - 2^-33].
C10_HOST_DEVICE inline float open_uniform_f(uint32_t k) {
  return static_cast<float>(((k >> 9) << 1) | 1u) * 5.9604644775390625e-08f;  // 2^-24
}
C10_HOST_DEVICE inline double open_uniform_d(uint32_t k) {
  return static_cast<double>((static_cast<uint64_t>(k) << 1) | 1u) * 1.16415321826934814453125e-10;  // 2^-33
}
template <typename T>
C10_HOST_DEVICE inline T open_uniform(uint32_t k);
template <>
C10_HOST_DEVICE inline float open_uniform<float>(uint32_t k) { return open_uniform_f(k); }
template <>
C10_HOST_DEVICE inline double open_uniform<double>(uint32_t k) { return open_uniform_d(k); }

// A 53-bit uniform in (0, 1) from two words, for the radius factors: the top 52 bits k of (hi, lo) give
// (2k + 1) 2^-53 in [2^-53, 1 - 2^-53] (exact). Psi^{-1}(U) then reaches 18.7 (tanh) and 36.7 (exp), and its
// small end resolves U down to 2^-53, as the pure-torch path's float64 uniforms do.
C10_HOST_DEVICE inline double open_uniform53(uint32_t hi, uint32_t lo) {
  const uint64_t k = (static_cast<uint64_t>(hi) << 20) | (lo >> 12);
  return static_cast<double>((k << 1) | 1u) * 1.1102230246251565404236316680908203125e-16;  // 2^-53
}

C10_HOST_DEVICE inline float bm_log(float x) { return logf(x); }
C10_HOST_DEVICE inline double bm_log(double x) { return log(x); }
C10_HOST_DEVICE inline float bm_sqrt(float x) { return sqrtf(x); }
C10_HOST_DEVICE inline double bm_sqrt(double x) { return sqrt(x); }
C10_HOST_DEVICE inline float bm_sin(float x) { return sinf(x); }
C10_HOST_DEVICE inline double bm_sin(double x) { return sin(x); }
C10_HOST_DEVICE inline float bm_cos(float x) { return cosf(x); }
C10_HOST_DEVICE inline double bm_cos(double x) { return cos(x); }

// Box-Muller: (u1, u2) -> r (cos 2 pi u2, sin 2 pi u2), r = sqrt(-2 log u1), two independent N(0, 1). u1 < 1
// makes r > 0 (>= 3.5e-4 in float, 2.4e-5 in double), and cos and sin are never both 0, so a row of Gaussians
// is never all zero (its direction g / ||g|| always exists).
template <typename T>
C10_HOST_DEVICE inline void box_muller(uint32_t k1, uint32_t k2, T& z0, T& z1) {
  const T r = bm_sqrt(T(-2) * bm_log(open_uniform<T>(k1)));
  const T theta = T(6.283185307179586476925286766559) * open_uniform<T>(k2);
  z0 = r * bm_cos(theta);
  z1 = r * bm_sin(theta);
}

// The 4 Gaussians of one group: elements 4 group + (0, 1, 2, 3) are Box-Muller of the words (x, y) and (z, w).
template <typename T>
C10_HOST_DEVICE inline void normal4(uint64_t seed, uint32_t group, uint32_t row, uint32_t offset, uint32_t stream,
                                    T (&z)[4]) {
  const U32x4 b = bits(seed, group, row, offset, stream);
  box_muller<T>(b.x, b.y, z[0], z[1]);
  box_muller<T>(b.z, b.w, z[2], z[3]);
}

}  // namespace philox
}  // namespace fastflow
