// wgan_ext::fused_clip_ -- the dispatcher-level definition.
//
// The schema marks the tensor list as mutated in place (Tensor(a!)[]) and returns nothing, like
// aten::_foreach_clamp_min_, so functionalization / torch.compile and opcheck treat it correctly.
// Backends register their kernels separately: csrc/cpu/ (in this library) and csrc/cuda/ (in the
// optional _C_cuda library, which a CPU-only machine never loads).
#include <Python.h>
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
// FusedClipper uses it. For a list of CPU tensors validated at construction it also keeps the
// CPU kernel's span table and calls the kernel directly: no dispatch-key scans, no argument
// checks, no table rebuild.
//
// Each call re-checks what `p.data = ...`, `resize_` or `set_` could have changed behind its
// back, reading TensorImpl fields through inline accessors only (a few ns per tensor: the
// out-of-line device()/data_ptr() calls cost more than the clamp of a small tensor). A change
// of pointer, size, dtype or density rebuilds the table; a change of device, key set (an
// inference or wrapper tensor) or an inference tensor outside InferenceMode sends the call
// through the op, which checks everything.
struct ClipPlan : torch::CustomClassHolder {
  // Tensors whose elements are not simply their memory (a negative or conjugate view) or that
  // wrap something else (Python subclasses such as FakeTensor, functional wrappers): the plan
  // never writes through their pointers; the op's dispatcher decides what they mean. A
  // `p.data = ...` that brings such keys changes the key set, which check() sees.
  static c10::DispatchKeySet not_plain_memory() {
    return c10::DispatchKeySet({c10::DispatchKey::Negative, c10::DispatchKey::Conjugate,
        c10::DispatchKey::ZeroTensor, c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  }

  // What the cached table was built from, per tensor (prints[i] describes tensors[i]).
  struct Fingerprint {
    c10::DispatchKeySet keys;
    const void* data;
    int64_t numel;
    caffe2::TypeMeta dtype;
    bool flat;
  };

  std::vector<at::Tensor> tensors;
  bool direct_cpu = false;
  bool any_inference = false;
  std::vector<Fingerprint> prints;
  CpuSpanTable table;

  explicit ClipPlan(std::vector<at::Tensor> ts) {
    auto unique = drop_duplicates(ts);
    tensors = unique.empty() ? std::move(ts) : std::move(unique);
    direct_cpu = true;
    for (const auto& t : tensors) {
      direct_cpu = direct_cpu && t.defined() && t.layout() == at::kStrided &&
          t.device().is_cpu() && is_supported_dtype(t.scalar_type()) && t.has_storage() &&
          !t.key_set().has_any(not_plain_memory());
    }
    if (direct_cpu) {
      snapshot();
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

  static Fingerprint print_of(const at::Tensor& t) {
    const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    return {impl->key_set(), data_of(impl), impl->numel(), impl->dtype(),
            impl->is_non_overlapping_and_dense()};
  }

  void snapshot() {
    prints.clear();
    prints.reserve(tensors.size());
    any_inference = false;
    for (const auto& t : tensors) {
      prints.push_back(print_of(t));
      any_inference = any_inference || t.is_inference();
    }
    table = build_cpu_span_table(tensors);
  }

  // 0: table valid; 1: table stale but the list can still go direct; 2: go through the op.
  int check() const {
    if (any_inference && !c10::InferenceMode::is_enabled()) {
      return 2;
    }
    int result = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const c10::TensorImpl* t = tensors[i].unsafeGetTensorImpl();
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

  void clip_(double lo, double hi) {
    if (direct_cpu && std::isfinite(lo) && std::isfinite(hi) && lo <= hi) {
      const int state = check();
      if (state == 1) {
        snapshot();
      }
      if (state < 2) {
        run_cpu_span_table(table, lo, hi);
        bump_versions(tensors);
        return;
      }
    }
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wgan_ext::fused_clip_", "")
                         .typed<void(at::TensorList, double, double)>();
    op.call(tensors, lo, hi);
  }

  int64_t size() const { return static_cast<int64_t>(tensors.size()); }

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
      .def(torch::init<std::vector<at::Tensor>>())
      .def("clip_", &wgan_ext::ClipPlan::clip_)
      .def("size", &wgan_ext::ClipPlan::size)
      .def("spans", &wgan_ext::ClipPlan::spans);
}

TORCH_LIBRARY_IMPL(wgan_ext, Autograd, m) {
  m.impl("fused_clip_", &wgan_ext::fused_clip_autograd);
}

// `import wgan_ext._C` loads this shared library, which registers the op through the static
// initialiser above; the Python module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
