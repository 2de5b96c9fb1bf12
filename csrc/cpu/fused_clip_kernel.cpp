// CPU kernel of wgan_ext::fused_clip_: every tensor of the call in one at::parallel_for.
//
// The work is laid out as one virtual flat buffer (the tensors end to end); parallel_for splits
// that by element count, so 800 tiny tensors and one huge one balance the same way, and a call
// pays for one parallel region instead of one dispatch per tensor.
#include "../fused_clip.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/Scalar.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace wgan_ext {
namespace {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kGrainSize = 32768;

// float / double: `lo > v ? lo : v` is exactly the maxps(lo, v) pattern, so the compiler
// vectorises it without -ffast-math, and a NaN v fails both compares and stays NaN.
// Always inlined into the cloned walk below, so each clone vectorises them at its own width.
#define WGAN_EXT_INLINE inline __attribute__((always_inline))

template <typename T>
WGAN_EXT_INLINE void clamp_span(T* p, int64_t n, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) {
    T v = p[i];
    v = lo > v ? lo : v;
    v = hi < v ? hi : v;
    p[i] = v;
  }
}

// Half / BFloat16: compare the bit patterns as sign-magnitude integers, which orders them as
// their values (a conversion to float is monotone and exact), so the loop stays integer-only and
// vectorises. The result is one of v, lo, hi -- exactly what clamp_ picks.
template <uint16_t kExpMask>
WGAN_EXT_INLINE void clamp_span_16(uint16_t* p, int64_t n, uint16_t lo_bits, uint16_t hi_bits) {
  auto key = [](uint16_t b) -> int32_t {
    const int32_t mag = b & 0x7fff;
    return (b & 0x8000) ? -mag : mag;  // -0 and +0 compare equal, as in IEEE
  };
  const int32_t lo = key(lo_bits);
  const int32_t hi = key(hi_bits);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t b = p[i];
    const int32_t k = key(b);
    const bool nan = (b & 0x7fff) > kExpMask;
    uint16_t r = k < lo ? lo_bits : b;
    r = k > hi ? hi_bits : r;
    p[i] = nan ? b : r;
  }
}

template <typename T>
uint16_t bits_of(T v) {
  uint16_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// Bounds rounded to each dtype the way clamp_'s CPU kernel rounds them (Scalar::to<scalar_t>),
// computed before any write so an out-of-range bound raises with nothing modified.
struct TypedBounds {
  float f_lo, f_hi;
  double d_lo, d_hi;
  uint16_t h_lo, h_hi, b_lo, b_hi;
};

int dtype_slot(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kDouble: return 1;
    case at::kHalf: return 2;
    default: return 3;  // BFloat16
  }
}

TypedBounds make_bounds(const bool need[4], double lo, double hi) {
  TypedBounds b{};
  const c10::Scalar slo(lo), shi(hi);
  if (need[0]) { b.f_lo = slo.to<float>(); b.f_hi = shi.to<float>(); }
  if (need[1]) { b.d_lo = lo; b.d_hi = hi; }
  if (need[2]) { b.h_lo = bits_of(slo.to<at::Half>()); b.h_hi = bits_of(shi.to<at::Half>()); }
  if (need[3]) {
    b.b_lo = bits_of(slo.to<at::BFloat16>());
    b.b_hi = bits_of(shi.to<at::BFloat16>());
  }
  return b;
}

// The span walk is cloned for AVX-512 (x86-64-v4, GCC 11+), AVX2 and baseline x86-64, picked
// at load time: the package is built without -march, yet in-cache data clamps at the width
// ATen's own (dispatched) kernel uses. The clone boundary is the whole walk, not each span: the clamp loops inline into it,
// so 800 small tensors cost 800 inlined loops, not 800 indirect calls through the ifunc.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define WGAN_EXT_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WGAN_EXT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WGAN_EXT_CLONES
#endif

WGAN_EXT_INLINE void clamp_range(void* data, at::ScalarType dtype, int64_t begin, int64_t end,
                        const TypedBounds& b) {
  const int64_t n = end - begin;
  switch (dtype) {
    case at::kFloat:
      clamp_span(static_cast<float*>(data) + begin, n, b.f_lo, b.f_hi);
      break;
    case at::kDouble:
      clamp_span(static_cast<double*>(data) + begin, n, b.d_lo, b.d_hi);
      break;
    case at::kHalf:
      clamp_span_16<0x7c00>(static_cast<uint16_t*>(data) + begin, n, b.h_lo, b.h_hi);
      break;
    default:  // BFloat16
      clamp_span_16<0x7f80>(static_cast<uint16_t*>(data) + begin, n, b.b_lo, b.b_hi);
      break;
  }
}

// Clamps elements [begin, end) of the table's virtual flat buffer.
WGAN_EXT_CLONES void clamp_table_range(const CpuSpanTable& table, int64_t begin, int64_t end,
                                       const TypedBounds& bounds) {
  const auto& ends = table.ends;
  size_t i = std::upper_bound(ends.begin(), ends.end(), begin) - ends.begin();
  int64_t pos = begin;
  while (pos < end) {
    const int64_t span_start = i == 0 ? 0 : ends[i - 1];
    const int64_t stop = std::min(end, ends[i]);
    clamp_range(table.data[i], table.dtype[i], pos - span_start, stop - span_start, bounds);
    pos = stop;
    ++i;
  }
}

void fused_clip_cpu(at::TensorList all_tensors, double lo, double hi) {
  check_fused_clip_args(all_tensors, lo, hi, c10::DeviceType::CPU);
  if (all_tensors.empty()) {
    return;
  }
  const std::vector<at::Tensor> unique = drop_duplicates(all_tensors);
  const at::TensorList tensors = unique.empty() ? all_tensors : at::TensorList(unique);
  run_cpu_span_table(build_cpu_span_table(tensors), lo, hi);
  bump_versions(tensors);
}

}  // namespace

CpuSpanTable build_cpu_span_table(at::TensorList tensors) {
  CpuSpanTable table;
  table.data.reserve(tensors.size());
  table.dtype.reserve(tensors.size());
  table.ends.reserve(tensors.size());
  const char* last_end = nullptr;  // one past the last span's final byte
  for (const auto& t : tensors) {
    if (t.numel() == 0) {
      continue;
    }
    table.need[dtype_slot(t.scalar_type())] = true;
    if (!is_flat(t)) {
      table.strided.push_back(t);
      continue;
    }
    char* data = static_cast<char*>(t.data_ptr());
    table.total += t.numel();
    if (data == last_end && table.dtype.back() == t.scalar_type()) {
      // Starts where the previous span ends (parameters flattened into one buffer, e.g. by
      // FusedClipper(flatten=True)): one longer span instead of a new one.
      table.ends.back() = table.total;
    } else {
      table.data.push_back(data);
      table.dtype.push_back(t.scalar_type());
      table.ends.push_back(table.total);
    }
    last_end = data + t.numel() * t.element_size();
  }
  return table;
}

void run_cpu_span_table(const CpuSpanTable& table, double lo, double hi) {
  const TypedBounds bounds = make_bounds(table.need, lo, hi);  // may raise: nothing written yet
  if (table.total <= kGrainSize) {
    clamp_table_range(table, 0, table.total, bounds);  // one thread anyway: skip the region
  } else {
    at::parallel_for(0, table.total, kGrainSize, [&](int64_t begin, int64_t end) {
      clamp_table_range(table, begin, end, bounds);
    });
  }
  if (!table.strided.empty()) {
    // Rare (a hand-passed slice): ATen's clamp_ below the autograd and version-counter layers,
    // so a leaf that requires grad is writable; the caller bumps every version once.
    at::AutoDispatchBelowADInplaceOrView guard;
    for (const auto& t : table.strided) {
      at::Tensor(t).clamp_(lo, hi);
    }
  }
}

TORCH_LIBRARY_IMPL(wgan_ext, CPU, m) {
  m.impl("fused_clip_", &fused_clip_cpu);
}

}  // namespace wgan_ext
