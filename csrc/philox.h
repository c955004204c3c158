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
// between rounds. ctr = (c0, c1, c2, c3), key = (k0, k1). The key is bumped after every round (the last bump is
// unused) so that the loop has no branch: a loop of these over a block of counters vectorises (draw.cpp).
C10_HOST_DEVICE inline U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)  // device pass only: the host compiler warns on an unknown pragma (g++ unrolls at -O3)
#pragma unroll
#endif
  for (int r = 0; r < kRounds; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c.x, hi0, lo0);
    mulhilo(kMul1, c.z, hi1, lo1);
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += kWeyl0;
    k1 += kWeyl1;
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
  return static_cast<float>(static_cast<int32_t>(((k >> 9) << 1) | 1u)) * 5.9604644775390625e-08f;  // 2^-24
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

// ---- float32 Box-Muller on the host: branch-free polynomials that the compiler vectorises ----------------------
// glibc's logf/sinf/cosf are scalar calls (~10 ns per Gaussian), 4x slower than torch.randn's vectorised
// Box-Muller; these two functions are plain arithmetic and bit operations on one lane, so a loop over a block
// of groups becomes SIMD code (draw.cpp). Both are accurate to ~2 float32 ulp over the uniforms' whole range
// (tests/test_draw_ext.py measures them against float64), and are bitwise the same at any SIMD width because
// setup.py compiles with -ffp-contract=off (no fused multiply-adds).

// -2 log(u) for u in [2^-24, 1): u = 2^e m with m in [sqrt(1/2), sqrt 2) (musl's bit trick), f = m - 1 exactly,
// log m = 2 atanh(s) with s = f / (2 + f), |s| <= 0.1716, by its series to s^9 (truncation < 3e-9 relative),
// and e log 2 split into an exact high part (e <= 24 times 16 significant bits) and a low part.
C10_HOST_DEVICE inline float as_float(uint32_t b) {
  union { uint32_t u; float f; } v{b};
  return v.f;
}
C10_HOST_DEVICE inline uint32_t as_bits(float f) {
  union { float f; uint32_t u; } v{f};
  return v.u;
}
C10_HOST_DEVICE inline float minus_two_log_f(float u) {
  const uint32_t ix = as_bits(u) + (0x3f800000u - 0x3f3504f3u);
  const float e = static_cast<float>(static_cast<int32_t>(ix >> 23) - 127);
  const float f = as_float((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float p = 0.6666666667f + z * (0.4f + z * (0.2857142857f + z * 0.2222222222f));
  const float log1p_f = 2.0f * s + s * z * p;
  return -2.0f * (e * 0.693145751953125f + (e * 1.428606765330187e-06f + log1p_f));
}

// (cos 2 pi u, sin 2 pi u) for u = k 2^-24, k an odd 24-bit integer (open_uniform_f): 4u = k 2^-22 splits
// exactly into a quadrant q = round(4u) and f = 4u - q in [-1/2, 1/2]; sin and cos of (pi/2) f are their Taylor
// series in f to f^9 and f^10 (truncation < 3e-9), and the quadrant swaps and negates them with bit operations.
// The reduction is exact, unlike libm's sinf(2 pi u), whose argument 2 pi u is already rounded (up to 4e-7 off).
C10_HOST_DEVICE inline void cos_sin_2pi_f(uint32_t k, float& c, float& s) {
  const int32_t q = (static_cast<int32_t>(k) + (1 << 21)) >> 22;                      // 0..4
  const float f = static_cast<float>(static_cast<int32_t>(k) - (q << 22)) * 2.384185791015625e-07f;  // 2^-22
  const float f2 = f * f;
  const float sn = f * (1.5707963268f + f2 * (-0.6459640975f + f2 * (0.07969262625f + f2 * (-0.004681754135f +
                   f2 * 1.604411848e-04f))));
  const float cs = 1.0f + f2 * (-1.233700550f + f2 * (0.2536695079f + f2 * (-0.02086348076f + f2 *
                   (9.192602748e-04f - f2 * 2.520204237e-05f))));
  // angle = q pi/2 + x: q odd swaps sin and cos; sin is negated for q in {2, 3}, cos for q in {1, 2}
  const uint32_t uq = static_cast<uint32_t>(q);
  const uint32_t swap = 0u - (uq & 1u);
  const uint32_t bs = as_bits(sn), bc = as_bits(cs);
  s = as_float(((bc & swap) | (bs & ~swap)) ^ ((uq & 2u) << 30));
  c = as_float(((bs & swap) | (bc & ~swap)) ^ (((uq + 1u) & 2u) << 30));
}

// The odd 24-bit integer behind open_uniform_f(k): open_uniform_f(k) = odd24(k) 2^-24.
C10_HOST_DEVICE inline uint32_t odd24(uint32_t k) { return ((k >> 9) << 1) | 1u; }

// Box-Muller: (u1, u2) -> r (cos 2 pi u2, sin 2 pi u2), r = sqrt(-2 log u1), two independent N(0, 1). u1 < 1
// makes r > 0 (>= 3.5e-4 in float, 2.4e-5 in double), and cos and sin are never both 0, so a row of Gaussians
// is never all zero (its direction g / ||g|| always exists).
// float: on the host the polynomials above; on CUDA libdevice's logf (1 ulp) and sincospif (exact reduction,
// 1 ulp), so the two devices agree to a few ulp. double: log, sin and cos of libm / libdevice (1-2 ulp).
C10_HOST_DEVICE inline void box_muller_f(uint32_t k1, uint32_t k2, float& z0, float& z1) {
#ifdef __CUDA_ARCH__
  const float r = sqrtf(-2.0f * logf(open_uniform_f(k1)));
  float sn, cs;
  sincospif(static_cast<float>(odd24(k2)) * 1.1920928955078125e-07f, &sn, &cs);  // 2 u2 = odd24 2^-23, exact
#else
  const float r = sqrtf(minus_two_log_f(open_uniform_f(k1)));
  float cs, sn;
  cos_sin_2pi_f(odd24(k2), cs, sn);
#endif
  z0 = r * cs;
  z1 = r * sn;
}

C10_HOST_DEVICE inline void box_muller_d(uint32_t k1, uint32_t k2, double& z0, double& z1) {
  const double r = sqrt(-2.0 * log(open_uniform_d(k1)));
#ifdef __CUDA_ARCH__
  double sn, cs;
  sincospi(2.0 * open_uniform_d(k2), &sn, &cs);
#else
  const double theta = 6.283185307179586476925286766559 * open_uniform_d(k2);
  const double cs = cos(theta), sn = sin(theta);
#endif
  z0 = r * cs;
  z1 = r * sn;
}

template <typename T>
C10_HOST_DEVICE inline void box_muller(uint32_t k1, uint32_t k2, T& z0, T& z1);
template <>
C10_HOST_DEVICE inline void box_muller<float>(uint32_t k1, uint32_t k2, float& z0, float& z1) {
  box_muller_f(k1, k2, z0, z1);
}
template <>
C10_HOST_DEVICE inline void box_muller<double>(uint32_t k1, uint32_t k2, double& z0, double& z1) {
  box_muller_d(k1, k2, z0, z1);
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
