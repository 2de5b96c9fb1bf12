// wgan_ext::fused_clip_ -- the dispatcher-level definition.
//
// The schema marks the tensor list as mutated in place (Tensor(a!)[]) and returns nothing, like
// aten::_foreach_clamp_min_, so functionalization / torch.compile and opcheck treat it correctly.
// Backends register their kernels separately: csrc/cpu/ (in this library) and csrc/cuda/ (in the
// optional _C_cuda library, which a CPU-only machine never loads).
#include <torch/custom_class.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include "fused_clip.h"

#include <c10/util/irange.h>

#include <vector>

namespace wgan_ext {
namespace {

// A tensor list kept on the C++ side, so that calling the op from Python does not convert the
// list element by element on every call (about 0.17 us per tensor through the Python binding).
// For a list of CPU tensors validated at construction it also keeps the CPU kernel's span table
// and calls the kernel directly: no dispatch-key scans, no argument checks, no table rebuild.
//
// Each call re-checks what `p.data = ...`, `resize_` or `set_` could have changed behind its
// back, reading TensorImpl fields through inline accessors only (a few ns per tensor: the
// out-of-line device()/data_ptr() calls cost more than the clamp of a small tensor). A change
// of pointer, size, dtype or density rebuilds the table; a change of device, key set (an
// inference or wrapper tensor) or an inference tensor outside InferenceMode is for the op,
// which checks everything.
//
// Two kinds:
// * owning (FusedClipper): holds its tensors; clip_() always clips, through the op when the
//   cached table cannot be trusted.
// * borrowing (fused_clip_'s per-module cache, wgan_ext/_plan_cache.py): holds bare
//   TensorImpl pointers, so a cache entry keeps no memory alive and does not block
//   torch.utils.swap_tensors (which refuses a TensorImpl that anything else references, even
//   weakly). The caller must prove each pointer is a live tensor right before the call: it
//   compares the module's fingerprint (the addresses of its parameters' TensorImpls, taken in
//   C++ by wgan_ext._C.module_fingerprint) with the one recorded with the plan. Whether the
//   TensorImpl at an address is the original or a new one at a reused address does not
//   matter: the per-call check reads the live object's fields, so the plan writes exactly the
//   memory that tensor now has. try_clip_() clips only when nothing needs the op's checks, and
//   otherwise writes nothing and returns false: the caller then takes the checked path, where
//   errors are raised in Python.
struct ClipPlan : torch::CustomClassHolder {
  // Tensors whose elements are not simply their memory (a negative or conjugate view) or that
  // wrap something else (Python subclasses such as FakeTensor, functional wrappers): the plan
  // never writes through their pointers; the op's dispatcher decides what they mean. A
  // `p.data = ...` that brings such keys changes the key set, which check() sees.
  static c10::DispatchKeySet not_plain_memory() {
    return c10::DispatchKeySet({c10::DispatchKey::Negative, c10::DispatchKey::Conjugate,
        c10::DispatchKey::ZeroTensor, c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  }

  // What the plan was built from, per tensor (prints[i] describes impls[i]).
  struct Fingerprint {
    c10::DispatchKeySet keys;
    const void* data;
    int64_t numel;
    caffe2::TypeMeta dtype;
    c10::Device device;
    bool flat;
  };

  std::vector<at::Tensor> tensors;       // owning plans only
  std::vector<c10::TensorImpl*> impls;   // both: what the per-call checks read
  bool owning = true;
  bool direct_cpu = false;
  bool any_inference = false;
  std::vector<Fingerprint> prints;
  CpuSpanTable table;

  // `direct=false` makes every call go through the op (tests use it to reach that path on a
  // CPU-only machine).
  ClipPlan(std::vector<at::Tensor> ts, bool owning_, bool direct) : owning(owning_) {
    auto unique = drop_duplicates(ts);
    std::vector<at::Tensor> list = unique.empty() ? std::move(ts) : std::move(unique);
    direct_cpu = direct;
    for (const auto& t : list) {
      TORCH_CHECK_TYPE(t.defined(), "ClipPlan: undefined tensor");
      impls.push_back(t.unsafeGetTensorImpl());
      direct_cpu = direct_cpu && t.layout() == at::kStrided && t.device().is_cpu() &&
          is_supported_dtype(t.scalar_type()) && t.has_storage() &&
          !t.key_set().has_any(not_plain_memory());
    }
    snapshot(list);
    if (owning) {
      tensors = std::move(list);
    }
  }

  // The element data a CPU kernel would write, from inline accessors (no out-of-line calls).
  // mutable_data() because a write is what follows: a copy-on-write storage is materialized
  // here (its pointer then differs from the snapshot's and the table is rebuilt).
  static const void* data_of(const c10::TensorImpl* t) {
    auto* storage = const_cast<c10::StorageImpl*>(t->unsafe_storage().unsafeGetStorageImpl());
    if (storage == nullptr || t->numel() == 0) {
      return nullptr;
    }
    return static_cast<const char*>(storage->mutable_data()) +
        t->dtype().itemsize() * t->storage_offset();
  }

  static Fingerprint print_of(const c10::TensorImpl* impl, bool with_data) {
    return {impl->key_set(), with_data ? data_of(impl) : nullptr, impl->numel(), impl->dtype(),
            impl->device(), impl->is_non_overlapping_and_dense()};
  }

  // Borrowing plans: references for the length of one call (the caller vouched that every
  // pointer is a live tensor).
  std::vector<at::Tensor> borrow() const {
    std::vector<at::Tensor> out;
    out.reserve(impls.size());
    for (auto* impl : impls) {
      out.emplace_back(
          c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::reclaim_copy(impl));
    }
    return out;
  }

  void snapshot(at::TensorList list) {
    prints.clear();
    prints.reserve(list.size());
    any_inference = false;
    for (const auto& t : list) {
      prints.push_back(print_of(t.unsafeGetTensorImpl(), direct_cpu));
      any_inference = any_inference || t.is_inference();
    }
    if (direct_cpu) {
      table = build_cpu_span_table(list);
      if (!owning && !table.strided.empty()) {
        // The table would own its strided tensors: a borrowing plan sends such a list through
        // the op instead (parameters are practically always dense).
        direct_cpu = false;
        table = CpuSpanTable();
      }
    }
  }

  // Direct CPU plans. 0: table valid; 1: table stale but the list can still go direct; 2: for
  // the op.
  int check() const {
    if (any_inference && !c10::InferenceMode::is_enabled()) {
      return 2;
    }
    int result = 0;
    for (size_t i = 0; i < impls.size(); ++i) {
      const c10::TensorImpl* t = impls[i];
      const Fingerprint& fp = prints[i];
      // A new device, dispatch key (a layout change brings one) or a storage-less tensor: let
      // the op check it.
      if (t->key_set() != fp.keys || !t->is_cpu() ||
          t->unsafe_storage().unsafeGetStorageImpl() == nullptr) {
        return 2;
      }
      if (t->dtype() != fp.dtype) {
        if (!is_supported_dtype(c10::typeMetaToScalarType(t->dtype()))) {
          return 2;  // the op raises the error
        }
        result = 1;
      } else if (t->numel() != fp.numel || data_of(t) != fp.data ||
                 t->is_non_overlapping_and_dense() != fp.flat) {
        result = 1;
      }
    }
    return result;
  }

  // Borrowing plans that go through the op: the op would accept the list unchanged (same keys,
  // device and dtype as when it was checked in Python), so it will not raise.
  bool op_ready() const {
    if (any_inference && !c10::InferenceMode::is_enabled()) {
      return false;
    }
    for (size_t i = 0; i < impls.size(); ++i) {
      const c10::TensorImpl* t = impls[i];
      const Fingerprint& fp = prints[i];
      if (t->key_set() != fp.keys || t->dtype() != fp.dtype || t->device() != fp.device) {
        return false;
      }
    }
    return true;
  }

  // False (nothing written) if a borrowing plan's rebuilt table has a strided tensor (the plan
  // then goes through the op from here on).
  bool run_direct(int state, double lo, double hi) {
    if (state == 1) {
      if (owning) {
        snapshot(tensors);
      } else {
        snapshot(borrow());
      }
      if (!direct_cpu) {
        return false;
      }
    }
    run_cpu_span_table(table, lo, hi);
    for (auto* impl : impls) {
      impl->bump_version();
    }
    return true;
  }

  static void call_op(at::TensorList list, double lo, double hi) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wgan_ext::fused_clip_", "")
                         .typed<void(at::TensorList, double, double)>();
    op.call(list, lo, hi);
  }

  static bool valid_bounds(double lo, double hi) {
    return std::isfinite(lo) && std::isfinite(hi) && lo <= hi;
  }

  // Owning plans: clamp every tensor, through the op when the table cannot be trusted.
  void clip_(double lo, double hi) {
    TORCH_CHECK(owning, "ClipPlan.clip_: a borrowing plan only offers try_clip_");
    if (direct_cpu && valid_bounds(lo, hi)) {
      const int state = check();
      if (state < 2 && run_direct(state, lo, hi)) {
        return;
      }
    }
    call_op(tensors, lo, hi);
  }

  // Borrowing plans: true if try_clip_ would clip now (nothing written). Only valid right
  // after the caller vouched for the pointers (see the comment above the struct).
  bool ready(double lo, double hi) const {
    if (owning || !valid_bounds(lo, hi)) {
      return false;
    }
    return direct_cpu ? check() < 2 : op_ready();
  }

  bool try_clip_(double lo, double hi) {
    if (owning || !valid_bounds(lo, hi)) {
      return false;
    }
    if (direct_cpu) {
      const int state = check();  // once: ready() would check every tensor a second time
      return state < 2 && run_direct(state, lo, hi);
    }
    if (!op_ready()) {
      return false;
    }
    call_op(borrow(), lo, hi);
    return true;
  }

  int64_t size() const { return static_cast<int64_t>(impls.size()); }

  // Memory spans in the cached CPU table (tensors adjacent in memory share one); -1 when the
  // plan goes through the op. For tests and benchmarks.
  int64_t spans() const {
    return direct_cpu ? static_cast<int64_t>(table.data.size()) : -1;
  }
};

// Clipping projects the weights between optimizer steps; it is not part of any graph. So the
// autograd layer only steps aside: no grad_fn, no leaf check (a leaf that requires grad may be
// clipped without torch.no_grad()), and the backend kernel bumps the version counters that a
// backward relies on to detect the write. Registering this (instead of relying on the boxed
// autograd fallback) also saves ~60 ns per tensor per call.
void fused_clip_autograd(at::TensorList tensors, double lo, double hi) {
  // A list spanning devices would be routed to one backend's kernel; refuse it here, before
  // any backend sees it (wgan_ext.fused_clip_ groups by device and never sends one).
  for (const auto i : c10::irange(tensors.size())) {
    TORCH_CHECK_VALUE(!tensors[i].defined() || tensors[i].device() == tensors[0].device(),
        "fused_clip_: all tensors must be on one device; tensors[0] is on ", tensors[0].device(),
        ", tensors[", i, "] on ", tensors[i].device());
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wgan_ext::fused_clip_", "")
                       .typed<void(at::TensorList, double, double)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.call(tensors, lo, hi);
}

}  // namespace
}  // namespace wgan_ext

TORCH_LIBRARY(wgan_ext, m) {
  m.def("fused_clip_(Tensor(a!)[] tensors, float lo, float hi) -> ()");
  m.class_<wgan_ext::ClipPlan>("ClipPlan")
      .def(torch::init<std::vector<at::Tensor>, bool, bool>(), "",
          {torch::arg("tensors"), torch::arg("owning") = true, torch::arg("direct") = true})
      .def("clip_", &wgan_ext::ClipPlan::clip_)
      .def("try_clip_", &wgan_ext::ClipPlan::try_clip_)
      .def("ready", &wgan_ext::ClipPlan::ready)
      .def("size", &wgan_ext::ClipPlan::size)
      .def("spans", &wgan_ext::ClipPlan::spans);
}

TORCH_LIBRARY_IMPL(wgan_ext, Autograd, m) {
  m.impl("fused_clip_", &wgan_ext::fused_clip_autograd);
}
