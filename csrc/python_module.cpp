// The Python module of the CPU library (`wgan_ext._C` when built by pip, `wgan_ext_C` when built
// on first use). Loading it registers the op (csrc/fused_clip.cpp, static initialisers); the
// module adds one function that must read Python objects faster than Python can:
//
//   module_fingerprint(module, expected=None)
//
// the address of every module type and every parameter's TensorImpl in an nn.Module tree,
// packed into bytes. fused_clip_(module) caches a plan per module and re-uses it while the
// fingerprint is unchanged: walking `_modules` / `_parameters` here costs ~50-60 ns per module
// (~125 ns when the module objects are not in cache), where `module.parameters()` costs
// ~1-2 us per module (nested Python generators).
//
// Why equal fingerprints mean "parameters() would return the same tensors": the walk reads the
// same dicts parameters() reads (the caller only caches trees whose module types do not override
// parameters/named_parameters/_named_members/named_modules), and the cached plan holds a weak
// reference to each TensorImpl, which keeps its address from being reused while the plan lives.
// So an equal address is the same TensorImpl, even after `torch.utils.swap_tensors`.
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

PyObject* g_modules_name = nullptr;     // "_modules"
PyObject* g_parameters_name = nullptr;  // "_parameters"

// A tree this large is not a critic (or it has a cycle): no fingerprint.
constexpr size_t kMaxEntries = size_t{1} << 20;

// Appends the tree's fingerprint to `out`, level by level. False (and no Python error set) if
// the tree cannot be fingerprinted: an attribute that is missing or not a dict, a parameter that
// is not a tensor, or more than `cap` entries (a cycle ends there).
//
// Each level goes through its modules in stages (instance dicts, then the two dicts in each,
// then their contents) rather than one module at a time: the iterations of a stage do not
// depend on each other, so the cache misses of many modules overlap. Right after an optimizer
// step has rewritten the weights, the module objects are out of cache and those misses are
// most of the cost: small800 then takes ~100 us instead of ~130 us one module at a time
// (~10 % slower when everything is in cache).
bool walk(PyObject* root, size_t cap, std::vector<uintptr_t>& out) {
  std::vector<PyObject*> level{root};  // owned references
  Py_INCREF(root);
  std::vector<PyObject*> dicts;        // owned: each module's instance dict
  std::vector<PyObject*> params;       // borrowed from `dicts`
  std::vector<PyObject*> children;     // borrowed from `dicts`
  std::vector<PyObject*> next;
  bool ok = true;
  while (ok && !level.empty()) {
    for (PyObject* m : level) {
      out.push_back(reinterpret_cast<uintptr_t>(Py_TYPE(m)));
      // Straight from the instance dict: half the cost of two getattr calls. The same values
      // as getattr gives, because the caller only caches trees whose types define no class
      // attribute of these names (only a data descriptor could take precedence over the dict).
      PyObject* d = PyObject_GenericGetDict(m, nullptr);
      if (d == nullptr) {
        ok = false;
        break;
      }
      dicts.push_back(d);
    }
    for (size_t i = 0; ok && i < dicts.size(); ++i) {
      PyObject* p = PyDict_GetItemWithError(dicts[i], g_parameters_name);
      PyObject* c = p ? PyDict_GetItemWithError(dicts[i], g_modules_name) : nullptr;
      if (c == nullptr || !PyDict_Check(p) || !PyDict_Check(c)) {
        ok = false;
        break;
      }
      params.push_back(p);
      children.push_back(c);
    }
    // Borrowed references from dicts this function owns; no Python code runs in these loops.
    for (size_t i = 0; ok && i < params.size(); ++i) {
      Py_ssize_t pos = 0;
      PyObject* key = nullptr;
      PyObject* value = nullptr;
      while (PyDict_Next(params[i], &pos, &key, &value)) {
        if (value == Py_None) {
          continue;  // parameters() skips None entries too
        }
        // A type check through the MRO: THPVariable_Check's isinstance() goes through the
        // metaclass's __instancecheck__ for a Parameter (~0.1 us) and may throw.
        if (!PyObject_TypeCheck(value, reinterpret_cast<PyTypeObject*>(THPVariableClass))) {
          ok = false;
          break;
        }
        out.push_back(
            reinterpret_cast<uintptr_t>(THPVariable_Unpack(value).unsafeGetTensorImpl()));
      }
    }
    for (size_t i = 0; ok && i < children.size(); ++i) {
      Py_ssize_t pos = 0;
      PyObject* key = nullptr;
      PyObject* value = nullptr;
      while (PyDict_Next(children[i], &pos, &key, &value)) {
        if (value != Py_None) {
          Py_INCREF(value);
          next.push_back(value);
        }
      }
    }
    ok = ok && out.size() <= cap;
    params.clear();
    children.clear();
    for (PyObject* d : dicts) {
      Py_DECREF(d);
    }
    dicts.clear();
    for (PyObject* m : level) {
      Py_DECREF(m);
    }
    level.swap(next);
    next.clear();
  }
  if (!ok) {
    PyErr_Clear();
  }
  for (PyObject* m : level) {
    Py_DECREF(m);
  }
  return ok;
}

PyObject* module_fingerprint(PyObject* /*self*/, PyObject* args) {
  PyObject* root = nullptr;
  PyObject* expected = Py_None;
  if (!PyArg_ParseTuple(args, "O|O:module_fingerprint", &root, &expected)) {
    return nullptr;
  }
  if (expected != Py_None && !PyBytes_Check(expected)) {
    PyErr_Format(PyExc_TypeError, "module_fingerprint: expected must be bytes or None, got %s",
        Py_TYPE(expected)->tp_name);
    return nullptr;
  }
  // Local, not reused: a getattr inside the walk may run Python code that calls this again.
  std::vector<uintptr_t> buffer;
  if (expected == Py_None) {
    if (!walk(root, kMaxEntries, buffer)) {
      Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(buffer.data()),
        static_cast<Py_ssize_t>(buffer.size() * sizeof(uintptr_t)));
  }
  // Compare: a walk that grows past the expected length has already differed.
  const size_t n = static_cast<size_t>(PyBytes_GET_SIZE(expected)) / sizeof(uintptr_t);
  buffer.reserve(n);
  const bool same = walk(root, n, buffer) && buffer.size() == n &&
      std::memcmp(buffer.data(), PyBytes_AS_STRING(expected), n * sizeof(uintptr_t)) == 0;
  return PyBool_FromLong(same);
}

PyMethodDef methods[] = {
    {"module_fingerprint", module_fingerprint, METH_VARARGS,
     "module_fingerprint(module, expected=None): the addresses of every module type and every "
     "parameter's TensorImpl in an nn.Module tree, as bytes (None if the tree cannot be "
     "fingerprinted); with `expected`, whether the tree's fingerprint equals it."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, nullptr, nullptr, -1, methods};

}  // namespace

#define WGAN_EXT_CONCAT_(a, b) a##b
#define WGAN_EXT_CONCAT(a, b) WGAN_EXT_CONCAT_(a, b)
#define WGAN_EXT_STR_(a) #a
#define WGAN_EXT_STR(a) WGAN_EXT_STR_(a)

// TORCH_EXTENSION_NAME is set by torch.utils.cpp_extension: `_C` for the pip build,
// `wgan_ext_C` for the build on first use.
extern "C" PyObject* WGAN_EXT_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  module_def.m_name = WGAN_EXT_STR(TORCH_EXTENSION_NAME);
  g_modules_name = PyUnicode_InternFromString("_modules");
  g_parameters_name = PyUnicode_InternFromString("_parameters");
  if (g_modules_name == nullptr || g_parameters_name == nullptr) {
    return nullptr;
  }
  return PyModule_Create(&module_def);
}
