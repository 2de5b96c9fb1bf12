// CPU kernel of wgan_ext::fused_clip_: the dense tensors of each dtype laid end to end as one
// virtual flat buffer, split by at::parallel_for by element count, so 800 small tensors and one
// huge one balance alike and a call pays one parallel region per dtype.
#include "../checks.h"
#include "vectorize.h"

#include <c10/core/Scalar.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace wgan_ext {
namespace {

// One dtype's dense tensors; span i holds elements [ends[i-1], ends[i]).
struct Spans {
  at::ScalarType dtype;
  std::vector<char*> data;
  std::vector<int64_t> ends;
  char* last_end = nullptr;
  int64_t total() const { return ends.empty() ? 0 : ends.back(); }
};

// Compare-and-select: a NaN fails both compares and keeps its bits, -0.0 against a bound of 0.0
// is kept, as clamp_ keeps them. float16/bfloat16 compare as sign-magnitude integers, which order
// like their values, so the loop stays integer-only and vectorises.
template <typename T>
inline void clamp_span(T* p, int64_t n, T lo, T hi, uint16_t) {
  for (int64_t i = 0; i < n; ++i) {
    T v = p[i];
    v = lo > v ? lo : v;
    p[i] = hi < v ? hi : v;
  }
}

inline void clamp_span(uint16_t* p, int64_t n, uint16_t lo_bits, uint16_t hi_bits, uint16_t exp_mask) {
  auto key = [](uint16_t b) -> int32_t { return (b & 0x8000) ? -(b & 0x7fff) : (b & 0x7fff); };
  const int32_t lo = key(lo_bits), hi = key(hi_bits);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t b = p[i];
    const int32_t k = key(b);
    uint16_t r = k < lo ? lo_bits : b;
    r = k > hi ? hi_bits : r;
    p[i] = (b & 0x7fff) > exp_mask ? b : r;  // NaN: its own bits
  }
}

template <typename T>
WGAN_EXT_CLONES void walk(const Spans& s, int64_t begin, int64_t end, T lo, T hi, uint16_t mask) {
  size_t i = std::upper_bound(s.ends.begin(), s.ends.end(), begin) - s.ends.begin();
  for (int64_t pos = begin; pos < end; ++i) {
    const int64_t start = i == 0 ? 0 : s.ends[i - 1];
    const int64_t stop = std::min(end, s.ends[i]);
    clamp_span(reinterpret_cast<T*>(s.data[i]) + (pos - start), stop - pos, lo, hi, mask);
    pos = stop;
  }
}

template <typename scalar_t>
void clamp_spans(const Spans& s, double lo_d, double hi_d) {
  // Bounds rounded as clamp_ rounds them; check_bounds made sure they fit.
  const auto lo = c10::Scalar(lo_d).to<scalar_t>(), hi = c10::Scalar(hi_d).to<scalar_t>();
  auto body = [&](int64_t begin, int64_t end) {
    if constexpr (sizeof(scalar_t) == 2) {
      uint16_t l, h;
      std::memcpy(&l, &lo, 2);
      std::memcpy(&h, &hi, 2);
      walk<uint16_t>(s, begin, end, l, h, std::is_same_v<scalar_t, at::Half> ? 0x7c00 : 0x7f80);
    } else {
      walk<scalar_t>(s, begin, end, lo, hi, 0);
    }
  };
  for_range(s.total(), body);
}

// Under torch.set_flush_denormal(True), ATen's bfloat16 clamp_ goes through float and flushes
// denormals, which the integer compare would not: such tensors take ATen's path.
bool flushes_denormals() {
#if defined(__x86_64__) || defined(_M_X64)
  return (_mm_getcsr() & 0x8040) != 0;  // FTZ or DAZ
#else
  return false;
#endif
}

void fused_clip_cpu(at::TensorList tensors, double lo, double hi) {
  check_clip(tensors, lo, hi);
  const Held held = unique_held(tensors);
  std::vector<Spans> tables;  // one per dtype present, nearly always one
  std::vector<at::Tensor> by_aten;
  const bool flush_bf16 = flushes_denormals();
  for (const auto& t : held.tensors) {
    if (t.numel() == 0) continue;
    if (!t.is_non_overlapping_and_dense() || (flush_bf16 && t.scalar_type() == at::kBFloat16)) {
      by_aten.push_back(t);  // rare: a slice that is not one dense block
      continue;
    }
    auto it = std::find_if(tables.begin(), tables.end(),
                           [&](const Spans& s) { return s.dtype == t.scalar_type(); });
    if (it == tables.end()) it = tables.insert(tables.end(), Spans{t.scalar_type()});
    char* p = static_cast<char*>(t.mutable_data_ptr());  // materializes a copy-on-write storage
    const int64_t total = it->total() + t.numel();
    if (p == it->last_end) {
      it->ends.back() = total;  // adjacent in memory (FusedClipper(flatten=True)): one span
    } else {
      it->data.push_back(p);
      it->ends.push_back(total);
    }
    it->last_end = p + t.numel() * t.element_size();
  }
  for (const auto& s : tables) {
    WGAN_EXT_DISPATCH(s.dtype, "fused_clip_", [&] { clamp_spans<scalar_t>(s, lo, hi); });
  }
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (const auto& t : by_aten) t.clamp_(lo, hi);
  }
  bump_versions(held.tensors);
}

}  // namespace
}  // namespace wgan_ext

TORCH_LIBRARY_IMPL(wgan_ext, CPU, m) {
  m.impl("fused_clip_", &wgan_ext::fused_clip_cpu);
}
