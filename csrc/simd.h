// Multi-versioning for the CPU kernels' SIMD loops (draw.cpp, rk_step.cpp): a function marked FASTFLOW_CLONES is
// compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and baseline x86-64, and an ifunc resolver picks one at load
// time (GCC >= 6 and clang >= 14 on x86-64 ELF; elsewhere one generic version). The clones give bitwise the same
// results as long as the code adds its terms in a fixed order: setup.py compiles with -ffp-contract=off (no fused
// multiply-adds), and reductions keep fixed lanes whatever the SIMD width.
#pragma once

#if defined(__x86_64__) && defined(__ELF__) && defined(__has_attribute)
#if __has_attribute(target_clones) && (!defined(__clang__) || __clang_major__ >= 14)
#define FASTFLOW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef FASTFLOW_CLONES
#define FASTFLOW_CLONES
#endif
// Helpers called from a clone must be inlined into it, to be compiled for the clone's instruction set.
#define FASTFLOW_INLINE inline __attribute__((always_inline))
