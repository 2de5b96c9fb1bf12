// CPU kernel of wgan_ext::fused_clip_: all tensors of one dtype in one at::parallel_for.
//
// The dense tensors of a dtype are laid end to end as one virtual flat buffer; parallel_for splits
// it by element count, so 800 small tensors and one huge one balance the same way and a call pays
// for one parallel region per dtype instead of one dispatch per tensor.
#include "../fused_clip.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace wgan_ext {
namespace {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kGrainSize = 32768;

void add_span(SpanTable& table, const at::Tensor& t) {
  char* p = static_cast<char*>(t.mutable_data_ptr());  // materializes a copy-on-write storage
  table.total += t.numel();
  if (p == table.last_end) {
    table.ends.back() = table.total;  // adjacent in memory (FusedClipper(flatten=True)): one span
  } else {
    table.data.push_back(p);
    table.ends.push_back(table.total);
  }
  table.last_end = p + t.numel() * t.element_size();
}

#define WGAN_EXT_INLINE inline __attribute__((always_inline))

// `lo > v ? lo : v` is exactly maxps(lo, v), so this vectorises without -ffast-math; a NaN fails
// both compares and is kept, and -0.0 against a bound of 0.0 is kept, as clamp_ keeps them.
template <typename T>
WGAN_EXT_INLINE void clamp_span(T* p, int64_t n, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    T v = p[i];
    v = lo > v ? lo : v;
    v = hi < v ? hi : v;
    p[i] = v;
  }
}

// float16 / bfloat16 as sign-magnitude integers, which order like their values (-0 == +0), so
// the loop is integer-only and vectorises; the result is one of v, lo, hi, as clamp_ picks, and
// a NaN (magnitude above the exponent mask) keeps its bits.
WGAN_EXT_INLINE void clamp_span_16(uint16_t* p, int64_t n, uint16_t lo_bits, uint16_t hi_bits,
                                   uint16_t exp_mask) {
  auto key = [](uint16_t b) -> int32_t {
    const int32_t mag = b & 0x7fff;
    return (b & 0x8000) ? -mag : mag;
  };
  const int32_t lo = key(lo_bits), hi = key(hi_bits);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t b = p[i];
    const int32_t k = key(b);
    uint16_t r = k < lo ? lo_bits : b;
    r = k > hi ? hi_bits : r;
    p[i] = (b & 0x7fff) > exp_mask ? b : r;
  }
}

// The walk over elements [begin, end) of a table, cloned for AVX-512 (GCC 11+), AVX2 and
// baseline x86-64 and picked at load time: the package is built without -march, yet clamps at
// the width ATen's own dispatched kernels use. The clamp loops inline into each clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define WGAN_EXT_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WGAN_EXT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WGAN_EXT_CLONES
#endif

// Clamps elements [begin, end) of the table: T is float, double, or uint16_t for the 16-bit
// dtypes (`bounds` then also carries the exponent mask).
template <typename T, typename... Bounds>
WGAN_EXT_INLINE void walk_impl(const SpanTable& t, int64_t begin, int64_t end, Bounds... bounds) {
  size_t i = std::upper_bound(t.ends.begin(), t.ends.end(), begin) - t.ends.begin();
  for (int64_t pos = begin; pos < end; ++i) {
    const int64_t start = i == 0 ? 0 : t.ends[i - 1];
    const int64_t stop = std::min(end, t.ends[i]);
    T* p = reinterpret_cast<T*>(t.data[i]) + (pos - start);
    if constexpr (std::is_same_v<T, uint16_t>) {
      clamp_span_16(p, stop - pos, bounds...);
    } else {
      clamp_span(p, stop - pos, bounds...);
    }
    pos = stop;
  }
}

WGAN_EXT_CLONES void walk(const SpanTable& t, int64_t begin, int64_t end, float lo, float hi) {
  walk_impl<float>(t, begin, end, lo, hi);
}

WGAN_EXT_CLONES void walk(const SpanTable& t, int64_t begin, int64_t end, double lo, double hi) {
  walk_impl<double>(t, begin, end, lo, hi);
}

WGAN_EXT_CLONES void walk_16(const SpanTable& t, int64_t begin, int64_t end, uint16_t lo,
                             uint16_t hi, uint16_t exp_mask) {
  walk_impl<uint16_t>(t, begin, end, lo, hi, exp_mask);
}

// Under torch.set_flush_denormal(True) (x86 DAZ/FTZ), ATen's bfloat16 clamp_ goes through float
// and flushes denormals, which the integer compare above would not: such calls take ATen's path.
// (float16 denormals convert to normal floats, so their results do not change.)
bool flushes_denormals() {
#if defined(__x86_64__) || defined(_M_X64)
  return (_mm_getcsr() & 0x8040) != 0;  // FTZ (bit 15) or DAZ (bit 6)
#else
  return false;
#endif
}

template <typename T>
uint16_t bits_of(T v) {
  uint16_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

template <typename scalar_t>
void run(const SpanTable& table, double lo_d, double hi_d) {
  // Bounds rounded as clamp_ rounds them (Scalar::to); check_all made sure they fit.
  const scalar_t lo = c10::Scalar(lo_d).to<scalar_t>();
  const scalar_t hi = c10::Scalar(hi_d).to<scalar_t>();
  auto body = [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, at::Half>) {
      walk_16(table, begin, end, bits_of(lo), bits_of(hi), 0x7c00);
    } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      walk_16(table, begin, end, bits_of(lo), bits_of(hi), 0x7f80);
    } else {
      walk(table, begin, end, lo, hi);
    }
  };
  if (table.total <= kGrainSize) {
    body(0, table.total);  // one thread anyway: skip the parallel region
  } else {
    at::parallel_for(0, table.total, kGrainSize, body);
  }
}

void fused_clip_cpu(at::TensorList tensors, double lo, double hi) {
  check_all(tensors, lo, hi, "tensors");
  check_one_device(tensors);
  BorrowedTensors unique;
  unique_tensors(tensors, unique);
  run_cpu(plan_cpu(unique, /*keep_alive=*/false), lo, hi);  // as any ATen op: the caller owns the memory
  bump_versions(unique);
}

}  // namespace

CpuWork plan_cpu(at::TensorList tensors, bool keep_alive) {
  CpuWork work;
  const bool flush_bf16 = flushes_denormals();
  for (const auto& t : tensors) {
    if (t.numel() == 0) continue;  // includes uninitialized (lazy) parameters
    if (keep_alive) work.keep_alive.push_back(t.storage());
    if (!t.is_non_overlapping_and_dense() || (flush_bf16 && t.scalar_type() == at::kBFloat16)) {
      work.strided.push_back(t);
      continue;
    }
    auto it = std::find_if(work.tables.begin(), work.tables.end(),
                           [&](const SpanTable& s) { return s.dtype == t.scalar_type(); });
    if (it == work.tables.end()) {
      work.tables.push_back(SpanTable{t.scalar_type()});
      it = work.tables.end() - 1;
    }
    add_span(*it, t);
  }
  return work;
}

void run_cpu(const CpuWork& work, double lo, double hi) {
  for (const auto& table : work.tables) {
    WGAN_EXT_DISPATCH(table.dtype, "fused_clip_", [&] { run<scalar_t>(table, lo, hi); });
  }
  clamp_with_aten_(work.strided, lo, hi);  // rare: a slice that is not one dense block, ...
}

TORCH_LIBRARY_IMPL(wgan_ext, CPU, m) {
  m.impl("fused_clip_", &fused_clip_cpu);
}

}  // namespace wgan_ext
