// The one check layer of both ops, shared by their CPU and CUDA kernels (header-only: the two
// libraries load separately). Every check runs before the first write, so an error leaves every
// tensor as it was; kernels write through data pointers, so they bump version counters here too.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/core/LegacyTypeDispatch.h>  // AutoDispatchBelowADInplaceOrView
#include <c10/core/InferenceMode.h>
#include <c10/util/irange.h>
#if __has_include(<c10/util/overflows.h>)
#include <c10/util/overflows.h>
#else
#include <c10/util/TypeCast.h>  // c10::overflows, before it had a header of its own
#endif

#include <cmath>
#include <string>
#include <unordered_set>
#include <vector>

namespace wgan_ext {

// Every kernel dispatches with this list; an unsupported dtype raises before any write.
#define WGAN_EXT_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline const char* layout_name(at::Layout layout) {  // as Python prints it
  switch (layout) {
    case at::kSparse: return "torch.sparse_coo";
    case at::kSparseCsr: return "torch.sparse_csr";
    case at::kSparseCsc: return "torch.sparse_csc";
    case at::kSparseBsr: return "torch.sparse_bsr";
    case at::kSparseBsc: return "torch.sparse_bsc";
    case at::kMkldnn: return "torch._mkldnn";
    case at::kJagged: return "torch.jagged";
    default: return "torch.strided";
  }
}

// `op` and `list` name the argument in messages, e.g. "fused_clip_", "tensors".
inline void check_tensor(const at::Tensor& t, const char* op, const char* list, size_t i,
                         bool written) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", list, "[", i, "] is undefined");
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", list, "[", i, "] has layout ",
      layout_name(t.layout()), "; only dense (strided) tensors are supported");
  const auto d = t.scalar_type();
  TORCH_CHECK_TYPE(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16,
      op, ": ", list, "[", i, "] has dtype ", dtype_name(d),
      "; supported: torch.float16, torch.bfloat16, torch.float32, torch.float64");
  if (!written) return;
  TORCH_CHECK_TYPE(!t.is_neg(), op, ": ", list, "[", i, "] is a negative view "
      "(torch._neg_view); its memory holds the negated values: pass t.resolve_neg()");
  TORCH_CHECK(!t._is_zerotensor(), op, ": ", list, "[", i, "] is a ZeroTensor, which is immutable");
  // The version bump after the write must not fail, so refuse here what it would refuse.
  TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), op, ": ", list, "[", i,
      "] is an inference tensor; in-place updates to it are only allowed in InferenceMode");
  TORCH_CHECK_VALUE(t.is_non_overlapping_and_dense() ||
      at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", list, "[", i,
      "] has elements that share memory (an expanded or overlapping view); clamp_ refuses to "
      "write it too");
}

template <typename scalar_t>
bool fits(double v) {
  return !c10::overflows<scalar_t, double>(v);
}

// clamp_ converts each bound to the tensor's dtype and raises if it overflows.
inline void check_bounds(double lo, double hi, const char* op, at::TensorList tensors,
                         const char* list) {
  TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi),
      op, ": bounds must be finite, got lo=", lo, ", hi=", hi);
  TORCH_CHECK_VALUE(lo <= hi, op, ": needs lo <= hi, got lo=", lo, ", hi=", hi);
  uint32_t checked = 1u << static_cast<int>(at::kDouble);  // holds every finite double
  for (const auto i : c10::irange(tensors.size())) {
    const auto d = tensors[i].scalar_type();
    const uint32_t bit = 1u << static_cast<int>(d);
    if (checked & bit) continue;
    checked |= bit;
    const bool ok = WGAN_EXT_DISPATCH(d, "check_bounds", [&] {
      return fits<scalar_t>(lo) && fits<scalar_t>(hi);
    });
    TORCH_CHECK_VALUE(ok, op, ": bounds lo=", lo, ", hi=", hi, " cannot be converted to ", dtype_name(d), " (",
          list, "[", i, "]) without overflow");
  }
}

inline void check_one_device(at::TensorList tensors, const char* op, const char* list) {
  for (const auto i : c10::irange(tensors.size())) {
    TORCH_CHECK_VALUE(tensors[i].device() == tensors[0].device(), op, ": all tensors must be on "
        "one device; ", list, "[0] is on ", tensors[0].device(), ", ", list, "[", i, "] on ",
        tensors[i].device());
  }
}

// The tensors of one call with their storages held for its length: the op runs without the GIL,
// so another thread may replace a parameter's memory (p.data = ...) while a kernel writes it.
struct Held {
  std::vector<at::Tensor> tensors;
  std::vector<c10::Storage> storages;
  void add(const at::Tensor& t) {
    tensors.push_back(t);
    if (t.has_storage()) storages.push_back(t.storage());
  }
};

// Each TensorImpl once (tied weights listed twice are clamped and bumped once), in order.
inline Held unique_held(at::TensorList tensors) {
  Held held;
  held.tensors.reserve(tensors.size());
  held.storages.reserve(tensors.size());
  std::unordered_set<const void*> seen(2 * tensors.size());
  for (const auto& t : tensors) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) held.add(t);
  }
  return held;
}

// Kernels write below ADInplaceOrView: bump each version once, so a backward that saved a
// weight before the write fails as it would after the ATen ops.
inline void bump_versions(at::TensorList tensors) {
  for (const auto& t : tensors) t.unsafeGetTensorImpl()->bump_version();
}

// fused_clip_'s checks, run by its Autograd kernel (before the dispatcher's Negative, ZeroTensor
// or sparse handling could see a tensor) and again by each backend kernel (for calls that skip
// autograd: inference mode, below autograd).
inline void check_clip(at::TensorList tensors, double lo, double hi) {
  for (const auto i : c10::irange(tensors.size())) {
    check_tensor(tensors[i], "fused_clip_", "tensors", i, /*written=*/true);
  }
  check_bounds(lo, hi, "fused_clip_", tensors, "tensors");
  check_one_device(tensors, "fused_clip_", "tensors");
}

}  // namespace wgan_ext
