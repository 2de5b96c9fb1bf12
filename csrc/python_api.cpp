// The Python module of the CPU library (`wgan_ext._C` when built by pip, `wgan_ext_C` when built
// on first use). Loading it registers the op; the module adds the two functions behind
// wgan_ext.fused_clip_ and FusedClipper, so that a call's per-tensor work happens once, here:
//
//   parameters(module) -> list   what list(module.parameters()) returns, walked in C++
//   clip_(tensors, lo, hi, backend, cuda, unwrap, dry_run) -> int
//
// Nothing is kept between calls: a call holds strong references to what it clamps, and the
// storages it writes, for its own length only.
#include <Python.h>

#include "python_module.h"

#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <memory>
#include <utility>
#include <vector>

#include "fused_clip.h"

namespace wgan_ext {
namespace {

// ---------------------------------------------------------------- parameters(module)
//
// The walk reproduces nn.Module.parameters(): modules in named_modules() order (pre-order, each
// once), then each module's `_parameters` values in order, None skipped, each tensor once. It
// reads the instance dicts that those methods read, so it only runs where nothing can make them
// read anything else: no module type or instance overrides a method of that chain or
// __getattribute__, no class attribute shadows `_parameters` / `_modules`, both are plain dicts,
// and hashing (the memo sets) is identity. Anywhere else it calls module.parameters() itself.

struct Refs {  // looked up once; immutable afterwards and alive for the process
  PyTypeObject* module_type;
  PyObject *s_parameters, *s_named_parameters, *s_named_members, *s_named_modules;
  PyObject *s_params_dict, *s_modules_dict, *s_getattribute, *s_hash, *s_eq;
  PyObject *fn_parameters, *fn_named_parameters, *fn_named_members, *fn_named_modules;
  PyObject *object_getattribute, *object_hash, *object_eq, *tensor_hash;
};

const Refs* refs() {
  static Refs* r = nullptr;  // written once, under the GIL
  if (r != nullptr) return r;
  THPObjectPtr mod(PyImport_ImportModule("torch.nn.modules.module"));
  THPObjectPtr torch_mod(PyImport_ImportModule("torch"));
  if (!mod || !torch_mod) throw python_error();
  THPObjectPtr module_cls(PyObject_GetAttrString(mod, "Module"));
  THPObjectPtr tensor_cls(PyObject_GetAttrString(torch_mod, "Tensor"));
  if (!module_cls || !tensor_cls) throw python_error();
  auto* out = new Refs();
  out->module_type = reinterpret_cast<PyTypeObject*>(module_cls.release());
  auto intern = [](const char* s) { return PyUnicode_InternFromString(s); };
  out->s_parameters = intern("parameters");
  out->s_named_parameters = intern("named_parameters");
  out->s_named_members = intern("_named_members");
  out->s_named_modules = intern("named_modules");
  out->s_params_dict = intern("_parameters");
  out->s_modules_dict = intern("_modules");
  out->s_getattribute = intern("__getattribute__");
  out->s_hash = intern("__hash__");
  out->s_eq = intern("__eq__");
  auto lookup = [](PyTypeObject* t, PyObject* name) {
    PyObject* v = _PyType_Lookup(t, name);
    Py_XINCREF(v);
    return v;
  };
  out->fn_parameters = lookup(out->module_type, out->s_parameters);
  out->fn_named_parameters = lookup(out->module_type, out->s_named_parameters);
  out->fn_named_members = lookup(out->module_type, out->s_named_members);
  out->fn_named_modules = lookup(out->module_type, out->s_named_modules);
  out->object_getattribute = lookup(&PyBaseObject_Type, out->s_getattribute);
  out->object_hash = lookup(&PyBaseObject_Type, out->s_hash);
  out->object_eq = lookup(&PyBaseObject_Type, out->s_eq);
  out->tensor_hash = lookup(reinterpret_cast<PyTypeObject*>(tensor_cls.get()), out->s_hash);
  // Methods replaced before this first call (a library patching nn.Module) are not the ones the
  // walk reproduces: keep them out of `out`, so every tree takes parameters() itself.
  PyObject* never = PyList_New(0);  // an object no type's lookup can return
  for (PyObject** fn : {&out->fn_parameters, &out->fn_named_parameters, &out->fn_named_members,
                        &out->fn_named_modules}) {
    THPObjectPtr where(*fn ? PyObject_GetAttrString(*fn, "__module__") : nullptr);
    PyErr_Clear();
    if (!where || !PyUnicode_Check(where.get()) ||
        PyUnicode_CompareWithASCIIString(where.get(), "torch.nn.modules.module") != 0) {
      *fn = never;
    }
  }
  r = out;
  return r;
}

// Per call: whether each type met so far passed its check (critics have a handful of types).
class TypeMemo {
 public:
  template <typename Check>
  bool ok(PyTypeObject* t, Check check) {
    for (const auto& e : seen_) {
      if (e.first == t) return e.second;
    }
    const bool result = check(t);
    seen_.emplace_back(t, result);
    return result;
  }

 private:
  std::vector<std::pair<PyTypeObject*, bool>> seen_;
};

bool plain_module_type(const Refs& r, PyTypeObject* t) {
  return PyType_IsSubtype(t, r.module_type) &&
      _PyType_Lookup(t, r.s_named_modules) == r.fn_named_modules &&
      _PyType_Lookup(t, r.s_getattribute) == r.object_getattribute &&
      _PyType_Lookup(t, r.s_hash) == r.object_hash && _PyType_Lookup(t, r.s_eq) == r.object_eq &&
      _PyType_Lookup(t, r.s_params_dict) == nullptr && _PyType_Lookup(t, r.s_modules_dict) == nullptr;
}

// 1: `out` holds the parameters; 0: not a plain tree (nothing set); throws on a Python error.
int walk_parameters(const Refs& r, PyObject* root, PyObject* out) {
  PyTypeObject* root_type = Py_TYPE(root);
  if (_PyType_Lookup(root_type, r.s_parameters) != r.fn_parameters ||
      _PyType_Lookup(root_type, r.s_named_parameters) != r.fn_named_parameters ||
      _PyType_Lookup(root_type, r.s_named_members) != r.fn_named_members) {
    return 0;
  }
  TypeMemo module_types, param_types;
  PointerSet seen_modules, seen_params;
  // Owned references: creating an instance dict can start a garbage collection, whose finalizers
  // may run Python code (and let another thread edit the tree) in the middle of the walk.
  std::vector<THPObjectPtr> stack, visited, children;
  Py_INCREF(root);
  stack.emplace_back(root);
  while (!stack.empty()) {
    visited.push_back(std::move(stack.back()));
    stack.pop_back();
    PyObject* m = visited.back().get();
    if (!seen_modules.insert(m)) continue;
    if (!module_types.ok(Py_TYPE(m), [&](PyTypeObject* t) { return plain_module_type(r, t); })) {
      return 0;
    }
    THPObjectPtr dict(PyObject_GenericGetDict(m, nullptr));
    if (!dict) throw python_error();
    PyObject* params = PyDict_GetItemWithError(dict, r.s_params_dict);
    PyObject* modules = PyDict_GetItemWithError(dict, r.s_modules_dict);
    if (PyErr_Occurred()) throw python_error();
    if (params == nullptr || modules == nullptr || !PyDict_CheckExact(params) ||
        !PyDict_CheckExact(modules) || PyDict_GetItemWithError(dict, r.s_named_modules) ||
        (m == root && (PyDict_GetItemWithError(dict, r.s_parameters) ||
                       PyDict_GetItemWithError(dict, r.s_named_parameters) ||
                       PyDict_GetItemWithError(dict, r.s_named_members)))) {
      if (PyErr_Occurred()) throw python_error();
      return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(params, &pos, &key, &value)) {
      if (value == Py_None) continue;
      if (!THPVariable_Check(value) ||
          !param_types.ok(Py_TYPE(value), [&](PyTypeObject* t) {
            return _PyType_Lookup(t, r.s_hash) == r.tensor_hash;
          })) {
        return 0;
      }
      if (seen_params.insert(value) && PyList_Append(out, value) < 0) throw python_error();
    }
    children.clear();
    pos = 0;
    while (PyDict_Next(modules, &pos, &key, &value)) {
      if (value == Py_None) continue;
      Py_INCREF(value);
      children.emplace_back(value);
    }
    for (auto it = children.rbegin(); it != children.rend(); ++it) {
      stack.push_back(std::move(*it));  // first child on top
    }
  }
  return 1;
}

PyObject* parameters(PyObject* /*self*/, PyObject* module) {
  HANDLE_TH_ERRORS
  THPObjectPtr out(PyList_New(0));
  if (!out) return nullptr;
  if (walk_parameters(*refs(), module, out.get()) == 1) return out.release();
  THPObjectPtr gen(PyObject_CallMethod(module, "parameters", nullptr));
  if (!gen) return nullptr;
  return PySequence_List(gen.get());
  END_HANDLE_TH_ERRORS
}

// ---------------------------------------------------------------- clip_(...)

enum Backend { kAuto = 0, kCpu = 1, kCuda = 2 };
enum CudaState { kCudaUntried = 0, kCudaMissing = 1, kCudaLoaded = 2 };
constexpr long kNeedCuda = 1;  // returned, with nothing written, until the CUDA backend was tried

const char* backend_name(int b) {
  return b == kCpu ? "cpu" : "cuda";
}

// Below this many CPU elements the clamp is quick: keep the GIL. Above, release it, holding every
// tensor and storage written.
constexpr int64_t kReleaseGil = int64_t{1} << 20;

// Bumps the version counters of `tensors` when it goes out of scope, also when a later part of
// the call raised: a tensor that may have been written must not look untouched to autograd.
struct BumpOnExit {
  at::TensorList tensors;
  ~BumpOnExit() { bump_versions(tensors); }
};

// tensors: a sequence of tensors. unwrap(t) is called for each tensor subclass that dispatches in
// Python (DTensor...) and returns the tensor to clamp in its place (its local shard) or t itself
// (the op is then dispatched to it). dry_run: check only. Returns kNeedCuda (nothing written)
// while the CUDA backend was not tried, else 0.
PyObject* clip_(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *seq, *unwrap;
  double lo, hi;
  int backend, cuda, dry_run;
  if (!PyArg_ParseTuple(args, "OddiiOp", &seq, &lo, &hi, &backend, &cuda, &unwrap, &dry_run)) {
    return nullptr;
  }
  // The tuple keeps the Python tensors alive. While no Python code runs and the GIL is held,
  // their TensorImpls stay theirs, so the list below only borrows them. Before anything that
  // lets other code run (unwrap, a subclass's dispatch, releasing the GIL), `owned` takes
  // references too: a torch.utils.swap_tensors elsewhere could otherwise free a TensorImpl.
  THPObjectPtr held(PySequence_Tuple(seq));
  if (!held) return nullptr;
  const Py_ssize_t n = PyTuple_GET_SIZE(held.get());
  BorrowedTensors tensors;     // what gets written, each TensorImpl once, in order
  std::vector<size_t> index;   // tensors[j] is critic[index[j]]
  BorrowedTensors wrappers;    // subclass tensors clamped through their local tensor
  std::vector<at::Tensor> owned;
  auto own_all = [&] {
    if (owned.empty()) owned.assign(tensors.begin(), tensors.end());
  };
  tensors.reserve(n);
  index.reserve(n);
  PointerSet seen(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* obj = PyTuple_GET_ITEM(held.get(), i);
    TORCH_CHECK_TYPE(THPVariable_Check(obj), "fused_clip_: critic[", i,
        "] must be a tensor or parameter, got ", Py_TYPE(obj)->tp_name);
    const at::Tensor& t = THPVariable_Unpack(obj);
    if (!seen.insert(t.unsafeGetTensorImpl())) continue;
    index.push_back(i);
    if (t.key_set().has(c10::DispatchKey::Python)) {
      own_all();
      owned.push_back(t);
      THPObjectPtr local(PyObject_CallOneArg(unwrap, obj));
      if (!local) throw python_error();
      if (local.get() != obj) {
        TORCH_CHECK_TYPE(THPVariable_Check(local.get()), "fused_clip_: critic[", i,
            "]: unwrapping gave ", Py_TYPE(local.get())->tp_name, ", not a tensor");
        wrappers.push_back(t);
        owned.push_back(THPVariable_Unpack(local.get()));
        tensors.push_back(owned.back());
        continue;
      }
    } else if (!owned.empty()) {
      owned.push_back(t);
    }
    tensors.push_back(t);
  }
  check_all(tensors, lo, hi, "critic", &index);

  // Route: plain CPU memory to the kernel here; plain CUDA memory (with its library) and tensor
  // subclasses through the op, one list per device and kind; anything else (devices without a
  // kernel, or without storage) to ATen's clamp_.
  BorrowedTensors cpu, aten;
  std::vector<std::pair<bool, std::unique_ptr<BorrowedTensors>>> op_groups;  // (plain, list)
  int64_t cpu_elements = 0;
  for (size_t j = 0; j < tensors.size(); ++j) {
    const at::Tensor& t = tensors[j];
    const c10::Device device = t.device();
    TORCH_CHECK_VALUE(backend == kAuto || device.type() == (backend == kCpu ? c10::kCPU : c10::kCUDA),
        "fused_clip_: backend='", backend_name(backend), "' cannot clip tensors on device ", device,
        " (critic[", index[j], "])");
    const bool plain = is_plain(t);
    const bool subclass = !plain && t.key_set().has_any(c10::DispatchKeySet(
        {c10::DispatchKey::Python, c10::DispatchKey::Functionalize}));
    if (device.is_cuda() && plain && cuda == kCudaUntried) {
      return PyLong_FromLong(kNeedCuda);
    }
    if (subclass || (plain && device.is_cuda() && cuda == kCudaLoaded)) {
      auto group = std::find_if(op_groups.begin(), op_groups.end(), [&](const auto& g) {
        return g.first == plain && (*g.second)[0].device() == device;
      });
      if (group == op_groups.end()) {
        op_groups.emplace_back(plain, std::make_unique<BorrowedTensors>());
        group = op_groups.end() - 1;
      }
      group->second->push_back(t);
    } else if (plain && device.is_cpu()) {
      cpu.push_back(t);
      cpu_elements += t.numel();
    } else {
      aten.push_back(t);
    }
  }
  if (dry_run) return PyLong_FromLong(0);

  // What can still fail goes first (a subclass's dispatch, a kernel launch); the CPU kernel,
  // which cannot, goes last. Each part's versions are bumped even if a later part raises.
  BumpOnExit bump_wrappers{wrappers};
  if (!op_groups.empty()) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("wgan_ext::fused_clip_", "")
                         .typed<void(at::TensorList, double, double)>();
    for (const auto& group : op_groups) op.call(*group.second, lo, hi);  // bumps its own versions
  }
  {
    BumpOnExit bump_aten{aten};
    clamp_with_aten_(aten, lo, hi);
  }
  BumpOnExit bump_cpu{cpu};
  if (cpu_elements < kReleaseGil) {
    run_cpu(plan_cpu(cpu, /*keep_alive=*/false), lo, hi);
  } else {
    own_all();
    const CpuWork work = plan_cpu(cpu, /*keep_alive=*/true);  // reads pointers under the GIL
    pybind11::gil_scoped_release no_gil;
    run_cpu(work, lo, hi);
  }
  return PyLong_FromLong(0);
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"parameters", parameters, METH_O, "list(module.parameters()), walked in C++ where that is exact"},
    {"clip_", clip_, METH_VARARGS, "the per-call work of fused_clip_ (see wgan_ext.ops)"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace wgan_ext

WGAN_EXT_PYTHON_MODULE("wgan-ext's compiled CPU library", wgan_ext::methods)
