// CPU kernel of wgan_ext::rmsprop_clip_: RMSprop's update and the clamp of every parameter in
// one at::parallel_for, one pass over each tensor's memory.
//
// The tensors are laid end to end as one virtual flat buffer that parallel_for splits by element
// count (as the clip kernel does). The arithmetic is rmsprop_clip_math.h's, which must not be
// contracted into FMAs behind its back: the library is compiled with -ffp-contract=off (and
// -fno-math-errno, so that sqrt vectorises; see setup.py); the pragma below keeps contraction
// off in a build that forgets the flag.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "../rmsprop_clip.h"
#include "../rmsprop_clip_math.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#endif

namespace wgan_ext::rmsprop {
namespace {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kGrainSize = 16384;

template <typename T>
using RootFn = void (*)(int64_t n, const T* in, T* out, int64_t mode);

// One tensor of the walk: a parameter with its state (g == nullptr: clip only).
struct Span {
  void* p;
  const void* g;
  void* sq;
  void* ga;
  void* buf;
  at::ScalarType dtype;
};

struct Table {
  std::vector<Span> spans;
  std::vector<int64_t> ends;  // running element count: span i covers [ends[i-1], ends[i])
  int64_t total = 0;
  int mode = 0;  // kFma * 8 + weight decay * 4 + centered * 2 + momentum
  Scalars<float> f32{}, f16{}, bf16{};
  Scalars<double> f64{};
  RootFn<float> root_f = nullptr;  // ATen's square root (MKL), or nullptr: std::sqrt
  RootFn<double> root_d = nullptr;
  // ATen's CPU loops as RMSprop would run them now: threads of a for_each, and the vector size
  // whose remainder its Half/BFloat16 loops leave to scalar code (0: nothing to mimic).
  int64_t aten_threads = 1;
  int64_t aten_width = 0;
};

// ATen's vectorised loops over a Half/BFloat16 range leave its last (length % 32) elements to
// scalar code, with AVX2 as with AVX-512 (measured). 0: vector and scalar code round alike
// (DEFAULT capability), nothing to mimic.
int64_t aten_half_width() {
#if defined(__x86_64__) || defined(_M_X64)
  static const int64_t width = at::get_cpu_capability() == "DEFAULT" ? 0 : 32;
  return width;
#else
  return 0;
#endif
}

// Does ATen's CPU code fuse multiply-adds? Its AVX2 and AVX-512 kernels do, its DEFAULT
// kernels (x86-64 baseline, no FMA) do not. Other architectures have FMA in their baseline.
bool aten_uses_fma() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool fma = at::get_cpu_capability() != "DEFAULT";
  return fma;
#else
  return true;
#endif
}

// ATen's float/double sqrt: with MKL, its CPU kernel calls MKL's vmsSqrt / vmdSqrt in high
// accuracy mode, whose results are not always the correctly rounded root (about 0.7% of them
// differ by one ulp), but do not depend on position or length. Taking the same function from
// the MKL inside libtorch_cpu is the only way to round as RMSprop does. n is passed as 64 bits:
// right for the ILP64 _64 entry point, and its low half is the LP64 one's int.
constexpr int64_t kVmlMode = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE

struct Roots {
  RootFn<float> f = nullptr;
  RootFn<double> d = nullptr;
  int (*local_threads)(int) = nullptr;  // MKL_Set_Num_Threads_Local
};

const Roots& aten_roots() {
  static const Roots roots = [] {
    Roots r;
#if AT_MKL_ENABLED() && defined(__linux__)
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&at::get_cpu_capability), &info) != 0 && info.dli_fname) {
      if (void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD)) {  // libtorch_cpu, loaded
        auto find = [lib](const char* a, const char* b) {
          void* f = dlsym(lib, a);
          return f != nullptr ? f : dlsym(lib, b);
        };
        r.f = reinterpret_cast<RootFn<float>>(find("vmsSqrt_64", "vmsSqrt"));
        r.d = reinterpret_cast<RootFn<double>>(find("vmdSqrt_64", "vmdSqrt"));
        r.local_threads = reinterpret_cast<int (*)(int)>(
            find("MKL_Set_Num_Threads_Local", "mkl_set_num_threads_local"));
      }
    }
#endif
    return r;
  }();
  return roots;
}

template <typename T>
RootFn<T> root_of(const Table& t) {
  if constexpr (std::is_same_v<T, float>) return t.root_f;
  else if constexpr (std::is_same_v<T, double>) return t.root_d;
  else return nullptr;
}

// Elements [b, e) of one parameter and its state.
template <typename T, bool kFma, bool kWd, bool kCentered, bool kMomentum, bool kFusedAlpha>
WGAN_EXT_MATH void walk_update(const Table& t, const Span& sp, int64_t b, int64_t e,
                               const Scalars<at::opmath_type<T>>& s) {
  using op_t = at::opmath_type<T>;
  T* __restrict__ p = static_cast<T*>(sp.p);
  const T* __restrict__ g = static_cast<const T*>(sp.g);
  T* __restrict__ sq = static_cast<T*>(sp.sq);
  T* __restrict__ ga = static_cast<T*>(sp.ga);
  T* __restrict__ buf = static_cast<T*>(sp.buf);
  T unused;
  const RootFn<T> root = root_of<T>(t);
  if (root == nullptr) {
    for (int64_t i = b; i < e; ++i) {
      update<T, kFma, kWd, kCentered, kMomentum, kFusedAlpha>(
          p[i], g[i], sq[i], kCentered ? ga[i] : unused, kMomentum ? buf[i] : unused, s);
    }
    return;
  }
  // Blocks that stay in L1: the front half, ATen's square root of the block, the back half.
  constexpr int64_t kBlock = 256;
  alignas(64) op_t gs[kBlock];
  alignas(64) T xs[kBlock], roots[kBlock];
  for (int64_t b0 = b; b0 < e; b0 += kBlock) {
    const int64_t n = std::min(kBlock, e - b0);
    T* __restrict__ pb = p + b0;
    for (int64_t j = 0; j < n; ++j) {
      xs[j] = front<T, kFma, kWd, kCentered, kFusedAlpha>(
          pb[j], g[b0 + j], sq[b0 + j], kCentered ? ga[b0 + j] : unused, gs[j], s);
    }
    root(n, xs, roots, kVmlMode);
    for (int64_t j = 0; j < n; ++j) {
      back<T, kFma, kMomentum, kFusedAlpha>(pb[j], gs[j], roots[j],
                                             kMomentum ? buf[b0 + j] : unused, s);
    }
  }
}

// Elements [b, e) of span sp (n elements in all).
template <typename T, bool kFma, bool kWd, bool kCentered, bool kMomentum>
WGAN_EXT_MATH void walk(const Table& t, const Span& sp, int64_t n, int64_t b, int64_t e,
                        const Scalars<at::opmath_type<T>>& scalars) {
  const auto s = scalars;  // a local copy: stores through the tensors cannot alias it
  if (sp.g == nullptr) {
    T* __restrict__ p = static_cast<T*>(sp.p);
    for (int64_t i = b; i < e; ++i) clamp<T>(p[i], s);
    return;
  }
  if constexpr (kFma && !std::is_same_v<T, at::opmath_type<T>>) {
    if (t.aten_width > 0 && (kWd || kMomentum)) {
      // Half/BFloat16 add with alpha: the scalar tail of each of ATen's per-thread ranges
      // rounds the product first. The ranges as TensorIterator::for_each cuts n elements.
      constexpr int64_t kAtenGrain = 32768;
      const int64_t threads = n > kAtenGrain ? std::min(t.aten_threads, (n + kAtenGrain - 1) / kAtenGrain) : 1;
      const int64_t chunk = (n + threads - 1) / threads;
      for (int64_t c0 = b / chunk * chunk; c0 < e; c0 += chunk) {
        const int64_t c1 = std::min(n, c0 + chunk);
        const int64_t tail = c1 - (c1 - c0) % t.aten_width;
        walk_update<T, kFma, kWd, kCentered, kMomentum, true>(t, sp, std::max(b, c0), std::min(e, tail), s);
        walk_update<T, kFma, kWd, kCentered, kMomentum, false>(t, sp, std::max(b, tail), std::min(e, c1), s);
      }
      return;
    }
  }
  walk_update<T, kFma, kWd, kCentered, kMomentum, kFma>(t, sp, b, e, s);
}

template <bool kFma, bool kWd, bool kCentered, bool kMomentum>
WGAN_EXT_MATH void walk_span(const Table& t, const Span& sp, int64_t n, int64_t b, int64_t e) {
  switch (sp.dtype) {
    case at::kFloat: walk<float, kFma, kWd, kCentered, kMomentum>(t, sp, n, b, e, t.f32); break;
    case at::kDouble: walk<double, kFma, kWd, kCentered, kMomentum>(t, sp, n, b, e, t.f64); break;
    case at::kHalf: walk<at::Half, kFma, kWd, kCentered, kMomentum>(t, sp, n, b, e, t.f16); break;
    default: walk<at::BFloat16, kFma, kWd, kCentered, kMomentum>(t, sp, n, b, e, t.bf16); break;
  }
}

// Cloned for AVX-512, AVX2+FMA and baseline x86-64 (picked at load time), as the clip kernel's
// walk: the package is built without -march. The clone is the whole walk, the loops inline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define WGAN_EXT_RMS_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WGAN_EXT_RMS_CLONES
#endif

// Elements [begin, end) of the table's virtual flat buffer.
WGAN_EXT_RMS_CLONES void walk_range(const Table& t, int64_t begin, int64_t end) {
  size_t i = std::upper_bound(t.ends.begin(), t.ends.end(), begin) - t.ends.begin();
  for (int64_t pos = begin; pos < end; ++i) {
    const int64_t start = i == 0 ? 0 : t.ends[i - 1];
    const int64_t stop = std::min(end, t.ends[i]);
    const Span& sp = t.spans[i];
    const int64_t b = pos - start, e = stop - start, n = t.ends[i] - start;
    switch (t.mode) {  // kFma * 8 + weight decay * 4 + centered * 2 + momentum
#define WGAN_EXT_MODE(m) \
  case m: walk_span<(m & 8) != 0, (m & 4) != 0, (m & 2) != 0, (m & 1) != 0>(t, sp, n, b, e); break;
      WGAN_EXT_MODE(0) WGAN_EXT_MODE(1) WGAN_EXT_MODE(2) WGAN_EXT_MODE(3)
      WGAN_EXT_MODE(4) WGAN_EXT_MODE(5) WGAN_EXT_MODE(6) WGAN_EXT_MODE(7)
      WGAN_EXT_MODE(8) WGAN_EXT_MODE(9) WGAN_EXT_MODE(10) WGAN_EXT_MODE(11)
      WGAN_EXT_MODE(12) WGAN_EXT_MODE(13) WGAN_EXT_MODE(14) WGAN_EXT_MODE(15)
#undef WGAN_EXT_MODE
    }
    pos = stop;
  }
}

void add_span(Table& t, const Span& sp, int64_t n) {
  t.total += n;
  t.spans.push_back(sp);
  t.ends.push_back(t.total);
}

void rmsprop_clip_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
    at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList steps,
    at::TensorList clip_only, const std::optional<at::Tensor>& lr_tensor, double lr,
    double alpha, double eps, double weight_decay, double momentum, bool centered,
    bool maximize, double lo, double hi) {
  const Args a{params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only,
               lr_tensor, lr, alpha, eps, weight_decay, momentum, centered, maximize, lo, hi};
  check_args(a, c10::DeviceType::CPU);
  const double lr_value = host_lr(a);

  Table t;
  t.mode = aten_uses_fma() * 8 + (weight_decay != 0) * 4 + centered * 2 + (momentum > 0);
  t.root_f = aten_roots().f;
  t.root_d = aten_roots().d;
  t.aten_threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  t.aten_width = aten_half_width();
  bool need[4] = {false, false, false, false};  // float, double, half, bfloat16
  std::vector<size_t> by_aten;          // parameters not laid out as one block like their state
  std::vector<at::Tensor> clamp_aten;   // clip-only tensors that are not one block
  for (const auto i : c10::irange(params.size())) {
    const auto& p = params[i];
    need[dtype_slot(p.scalar_type())] = true;
    if (p.numel() == 0) continue;
    if (!walks_flat(a, i)) {
      by_aten.push_back(i);
      continue;
    }
    add_span(t, {p.data_ptr(), grads[i].const_data_ptr(), square_avgs[i].data_ptr(),
                 centered ? grad_avgs[i].data_ptr() : nullptr,
                 momentum > 0 ? momentum_buffers[i].data_ptr() : nullptr, p.scalar_type()},
             p.numel());
  }
  for (const auto& c : clip_only) {
    need[dtype_slot(c.scalar_type())] = true;
    if (c.numel() == 0) continue;
    if (c.is_non_overlapping_and_dense()) {
      add_span(t, {c.data_ptr(), nullptr, nullptr, nullptr, nullptr, c.scalar_type()}, c.numel());
    } else {
      clamp_aten.push_back(c);
    }
  }
  // May raise (a scalar out of a dtype's range): still nothing written.
  auto scalars = [&](auto tag) {
    return make_scalars<decltype(tag)>(alpha, eps, weight_decay, momentum, maximize, lo, hi,
                                       lr_value, /*lr_on_device=*/false);
  };
  if (need[0]) t.f32 = scalars(float{});
  if (need[1]) t.f64 = scalars(double{});
  if (need[2]) t.f16 = scalars(at::Half{});
  if (need[3]) t.bf16 = scalars(at::BFloat16{});

  // Every check done: now write.
  auto run = [&t](int64_t b, int64_t e) {
    // One MKL thread, on this thread, for the length of the walk: MKL's threading machinery in
    // each square-root call costs more than the roots (benchmarks/RESULTS.md).
    auto* local_threads = aten_roots().local_threads;
    const int before = local_threads != nullptr ? local_threads(1) : 0;
    walk_range(t, b, e);
    if (local_threads != nullptr) local_threads(before);
  };
  if (t.total <= kGrainSize) {
    run(0, t.total);
  } else {
    at::parallel_for(0, t.total, kGrainSize, run);
  }
  finish_with_aten(a, by_aten, clamp_aten, /*device_steps=*/{}, /*host_steps=*/steps, lr_value);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgan_ext, CPU, m) {
  m.impl("rmsprop_clip_", &rmsprop_clip_cpu);
}

}  // namespace wgan_ext::rmsprop
