// What every entry point of wgan_ext::fused_clip_ shares: the op's CPU and CUDA kernels, the
// Python entry (python_api.cpp) and the CUDA plan of FusedClipper. One set of checks, run on
// every tensor before the first write, so an error leaves every tensor as it was; and the
// bookkeeping an in-place op owes its arguments. Header-only: the CPU and CUDA libraries are
// loaded separately and cannot link against each other.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/Scalar.h>
#if __has_include(<c10/util/overflows.h>)
#include <c10/util/overflows.h>
#else
#include <c10/util/TypeCast.h>  // c10::overflows, before it had a header of its own
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace wgan_ext {

// The dtypes every kernel handles. Kernels dispatch with WGAN_EXT_DISPATCH (an unsupported dtype
// raises there, never falls into a default branch); is_supported_dtype is the same list, for the
// up-front check that names the offending tensor.
#define WGAN_EXT_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline std::string layout_name(at::Layout layout) {  // as Python prints it
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

// Tensors whose memory is not simply their values, or that wrap something else: no kernel
// writes through their pointers; the dispatcher decides what the op means for them.
inline bool is_plain(const at::Tensor& t) {
  return !t.key_set().has_any(c10::DispatchKeySet(
             {c10::DispatchKey::Python, c10::DispatchKey::Functionalize})) &&
      t.has_storage();
}

inline void check_bounds(double lo, double hi) {
  TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi),
      "fused_clip_: bounds must be finite, got lo=", lo, ", hi=", hi);
  TORCH_CHECK_VALUE(lo <= hi, "fused_clip_: needs lo <= hi, got lo=", lo, ", hi=", hi);
}

// `what` names the list in messages: "critic" from Python, "tensors" for the op.
inline void check_tensor(const at::Tensor& t, const char* what, size_t i) {
  TORCH_CHECK_TYPE(t.defined(), "fused_clip_: ", what, "[", i, "] is undefined");
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, "fused_clip_: ", what, "[", i, "] has layout ",
      layout_name(t.layout()), "; only dense (strided) tensors can be clipped");
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), "fused_clip_: ", what, "[", i,
      "] has dtype ", dtype_name(t.scalar_type()),
      "; supported: torch.float16, torch.bfloat16, torch.float32, torch.float64");
  TORCH_CHECK_TYPE(!t.is_neg(), "fused_clip_: ", what, "[", i, "] is a negative view "
      "(torch._neg_view); its memory holds the negated values: pass t.resolve_neg()");
  TORCH_CHECK(!t._is_zerotensor(), "fused_clip_: ", what, "[", i, "] is a ZeroTensor, which is "
      "immutable");
  // The version bump after the write must not fail, so refuse here what it would refuse.
  TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), "fused_clip_: ", what, "[",
      i, "] is an inference tensor; in-place updates to it are only allowed in InferenceMode");
  TORCH_CHECK_VALUE(t.is_non_overlapping_and_dense() ||
          at::has_internal_overlap(t) != at::MemOverlap::Yes,
      "fused_clip_: ", what, "[", i, "] has elements that share memory (an expanded or "
      "overlapping view); clamp_ refuses to write it too");
}

// clamp_ converts each bound to the tensor's dtype and raises if it overflows; check every dtype
// of the call before anything is written (converting them afterwards then cannot throw).
template <typename scalar_t>
void check_bound_fits(double lo, double hi, at::ScalarType dtype, const char* what, size_t i) {
  const bool overflow = c10::overflows<scalar_t, double>(lo) || c10::overflows<scalar_t, double>(hi);
  TORCH_CHECK_VALUE(!overflow,
      "fused_clip_: bounds lo=", lo, ", hi=", hi, " cannot be converted to ", dtype_name(dtype),
      " (", what, "[", i, "]) without overflow");
}

// Checks the bounds and every tensor; writes nothing. tensors[j] is named what[index[j]] (what[j]
// without an index).
inline void check_all(at::TensorList tensors, double lo, double hi, const char* what,
                      const std::vector<size_t>* index = nullptr) {
  check_bounds(lo, hi);
  std::vector<at::ScalarType> checked;
  for (size_t j = 0; j < tensors.size(); ++j) {
    const at::Tensor& t = tensors[j];
    const size_t i = index ? (*index)[j] : j;
    check_tensor(t, what, i);
    const at::ScalarType dtype = t.scalar_type();
    if (std::find(checked.begin(), checked.end(), dtype) == checked.end()) {
      checked.push_back(dtype);
      WGAN_EXT_DISPATCH(dtype, "fused_clip_", [&] { check_bound_fits<scalar_t>(lo, hi, dtype, what, i); });
    }
  }
}

// A set of pointers for one call: which TensorImpls (or Python objects) were already seen, so
// tied weights listed twice are clamped and version-bumped once. Open addressing, grows at half
// full; nothing is ever erased.
class PointerSet {
 public:
  explicit PointerSet(size_t n = 0) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, nullptr);
  }
  // True if `p` was not in the set yet.
  bool insert(const void* p) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    const void*& slot = find(p);
    if (slot == p) return false;
    slot = p;
    ++size_;
    return true;
  }

 private:
  const void*& find(const void* p) {
    const size_t mask = slots_.size() - 1;
    size_t i = ((reinterpret_cast<uintptr_t>(p) >> 4) * 0x9E3779B97F4A7C15ull) >> 20;
    for (;; ++i) {
      const void*& slot = slots_[i & mask];
      if (slot == p || slot == nullptr) return slot;
    }
  }
  void grow() {
    std::vector<const void*> old(slots_.size() * 2, nullptr);
    old.swap(slots_);
    for (const void* p : old) {
      if (p != nullptr) find(p) = p;
    }
  }
  std::vector<const void*> slots_;
  size_t size_ = 0;
};

// at::Tensor handles that borrow tensors someone else keeps alive for the call (an argument list,
// a tuple of Python objects): no refcount traffic. That matters because copying an at::Tensor
// that Python also owns increfs its PyObject, and dropping the copy decrefs it under the GIL.
class BorrowedTensors {
 public:
  BorrowedTensors() = default;
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;
  ~BorrowedTensors() {
    for (auto& t : list_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  }
  void reserve(size_t n) { list_.reserve(n); }
  void push_back(const at::Tensor& t) {
    list_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(t));
  }
  size_t size() const { return list_.size(); }
  bool empty() const { return list_.empty(); }
  const at::Tensor& operator[](size_t i) const { return list_[i]; }
  const at::Tensor* begin() const { return list_.data(); }
  const at::Tensor* end() const { return list_.data() + list_.size(); }
  operator at::TensorList() const { return list_; }

 private:
  std::vector<at::Tensor> list_;
};

// Each TensorImpl of `tensors` once, in order, borrowed from `tensors`.
inline void unique_tensors(at::TensorList tensors, BorrowedTensors& out) {
  PointerSet seen(tensors.size());
  out.reserve(tensors.size());
  for (const auto& t : tensors) {
    if (seen.insert(t.unsafeGetTensorImpl())) out.push_back(t);
  }
}

// Kernels write through data pointers, below ADInplaceOrView: bump the version counters by hand,
// once each, so a backward that saved a weight before the clip fails exactly as after clamp_.
inline void bump_versions(at::TensorList tensors) {
  for (const auto& t : tensors) {
    t.unsafeGetTensorImpl()->bump_version();
  }
}

// ATen's own clamp_ for what no kernel writes directly (strided slices, devices without a
// kernel), below autograd so a leaf that requires grad is writable; versions are bumped by the
// caller.
inline void clamp_with_aten_(at::TensorList tensors, double lo, double hi) {
  if (tensors.empty()) return;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  for (const auto& t : tensors) {
    t.clamp_(lo, hi);
  }
}

// The op's kernels receive one device's tensors: the Autograd layer checks, but inference
// tensors and calls below autograd do not pass through it.
inline void check_one_device(at::TensorList tensors) {
  for (size_t i = 1; i < tensors.size(); ++i) {
    TORCH_CHECK_VALUE(tensors[i].device() == tensors[0].device(),
        "fused_clip_: all tensors must be on one device; tensors[0] is on ", tensors[0].device(),
        ", tensors[", i, "] on ", tensors[i].device());
  }
}

// The CPU kernel (cpu/fused_clip_kernel.cpp), in two steps so the caller can release the GIL
// in between: plan_cpu reads every tensor's memory (with keep_alive, it also holds each storage,
// so a `p.data = ...` in another thread cannot free it mid-write); run_cpu only clamps.
struct SpanTable {  // one dtype's dense tensors; span i holds elements [ends[i-1], ends[i])
  at::ScalarType dtype;
  std::vector<char*> data;
  std::vector<int64_t> ends;
  int64_t total = 0;
  char* last_end = nullptr;
};
struct CpuWork {
  std::vector<SpanTable> tables;  // one per dtype present, nearly always one
  std::vector<at::Tensor> strided;
  std::vector<c10::Storage> keep_alive;
};
// `tensors` checked (check_all) and unique.
CpuWork plan_cpu(at::TensorList tensors, bool keep_alive);
void run_cpu(const CpuWork& work, double lo, double hi);

}  // namespace wgan_ext
