// Shared by the CPU and CUDA kernels of wgan_ext::fused_clip_: argument checks that run before
// any tensor is written (so an error leaves every tensor untouched) and the autograd bookkeeping
// that an in-place op owes its arguments.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <vector>

namespace wgan_ext {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Raises TypeError / ValueError (TORCH_CHECK_TYPE / TORCH_CHECK_VALUE) naming the offending
// element; touches nothing.
inline void check_fused_clip_args(
    const at::TensorList tensors, double lo, double hi, c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi),
      "fused_clip_: bounds must be finite, got lo=", lo, ", hi=", hi);
  TORCH_CHECK_VALUE(lo <= hi, "fused_clip_: needs lo <= hi, got lo=", lo, ", hi=", hi);
  if (tensors.empty()) {
    return;
  }
  const auto device = tensors[0].device();
  for (const auto i : c10::irange(tensors.size())) {
    const auto& t = tensors[i];
    TORCH_CHECK_TYPE(t.defined(), "fused_clip_: tensors[", i, "] is undefined");
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, "fused_clip_: tensors[", i, "] has layout ",
        t.layout(), "; only dense (strided) tensors can be clipped");
    TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), "fused_clip_: tensors[", i,
        "] has dtype ", t.scalar_type(), "; supported: Half, BFloat16, Float, Double");
    TORCH_CHECK_VALUE(t.device().type() == device_type && t.device() == device,
        "fused_clip_: all tensors must be on one ", c10::DeviceTypeName(device_type),
        " device; tensors[0] is on ", device, ", tensors[", i, "] on ", t.device());
    // The version bump at the end must not fail after values were written.
    TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), "fused_clip_: tensors[",
        i, "] is an inference tensor; in-place updates to it are only allowed in InferenceMode");
  }
}

// The same tensor passed twice (tied weights listed by hand) is clamped and version-bumped once:
// two threads writing one address would be a race, and clamp_ bumps a version once.
// Returns an empty vector when there is nothing to drop (the common case), so callers keep
// using the caller's list without copying (and ref-counting) every tensor.
inline std::vector<at::Tensor> drop_duplicates(const at::TensorList tensors) {
  std::vector<const c10::TensorImpl*> impls;
  impls.reserve(tensors.size());
  for (const auto& t : tensors) {
    impls.push_back(t.unsafeGetTensorImpl());
  }
  std::sort(impls.begin(), impls.end());
  if (std::adjacent_find(impls.begin(), impls.end()) == impls.end()) {
    return {};
  }
  std::vector<at::Tensor> out;
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& t : tensors) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) {
      out.push_back(t);
    }
  }
  return out;
}

// Writes through data_ptr bypass ADInplaceOrView, so bump the version counters by hand: a
// backward that saved a weight before it was clipped must fail exactly as after clamp_.
inline void bump_versions(const at::TensorList tensors) {
  for (const auto& t : tensors) {
    t.unsafeGetTensorImpl()->bump_version();
  }
}

// The CPU kernel's work list (csrc/cpu/fused_clip_kernel.cpp): the non-empty tensors laid end
// to end as spans of memory, plus the rare tensors that are not one dense block.
struct CpuSpanTable {
  std::vector<void*> data;
  std::vector<at::ScalarType> dtype;
  std::vector<int64_t> ends;  // running element count: span i covers [ends[i-1], ends[i])
  std::vector<at::Tensor> strided;
  bool need[4] = {false, false, false, false};  // float, double, half, bfloat16 present
  int64_t total = 0;
};
CpuSpanTable build_cpu_span_table(at::TensorList tensors);
// Clamps what the table points at; bumps no version counter (the caller does).
void run_cpu_span_table(const CpuSpanTable& table, double lo, double hi);

// A tensor whose elements fill one gap-free block of memory (any order) can be clamped as a
// flat span; anything else (a strided slice) takes ATen's own clamp_.
inline bool is_flat(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense();
}

}  // namespace wgan_ext
