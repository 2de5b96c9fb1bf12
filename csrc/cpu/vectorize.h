// What both CPU kernels share: their elementwise loops are cloned for AVX-512, AVX2 and baseline
// x86-64 and picked at load time (the package is built without -march, yet runs at the width
// ATen's own dispatched kernels use), and split over threads only past a grain size.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define WGAN_EXT_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WGAN_EXT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WGAN_EXT_CLONES
#endif

namespace wgan_ext {

constexpr int64_t kGrainSize = 32768;  // below this, a second thread costs more than it saves

// f(begin, end) over [0, n): on this thread for small n (no parallel region), else split.
template <typename F>
void for_range(int64_t n, const F& f) {
  if (n <= kGrainSize) {
    f(0, n);
  } else {
    at::parallel_for(0, n, kGrainSize, f);
  }
}

}  // namespace wgan_ext
