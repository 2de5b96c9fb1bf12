// The Python module of the CPU library (`wgan_ext._C` when built by pip, `wgan_ext_C` when built
// on first use). Loading it registers the op (csrc/fused_clip.cpp, static initialisers); the
// module adds one function that must read Python objects faster than Python can:
//
//   module_fingerprint(module, expected=None)
//
// the address of every module type and every parameter's TensorImpl in an nn.Module tree,
// packed into bytes. fused_clip_(module) caches a plan per module and re-uses it while the
// fingerprint is unchanged: walking `_modules` / `_parameters` here costs ~70 ns per module
// (~175 ns when the module objects are not in cache), where `module.parameters()` costs
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

struct Ref {  // an owned reference, released on scope exit
  PyObject* p;
  explicit Ref(PyObject* o) : p(o) {}
  ~Ref() { Py_XDECREF(p); }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
};

// Appends the tree's fingerprint to `out`. False (and no Python error set) if the tree cannot
// be fingerprinted: an attribute that is missing or not a dict, a parameter that is not a
// tensor, or more than `cap` entries.
bool walk(PyObject* root, size_t cap, std::vector<uintptr_t>& out) {
  // Owned references to the modules still to visit.
  std::vector<PyObject*> stack;
  Py_INCREF(root);
  stack.push_back(root);
  bool ok = true;
  while (ok && !stack.empty()) {
    Ref module(stack.back());
    stack.pop_back();
    out.push_back(reinterpret_cast<uintptr_t>(Py_TYPE(module.p)));
    // Straight from the instance dict: half the cost of two getattr calls. The same values
    // as getattr gives, because the caller only caches trees whose types define no class
    // attribute of these names (only a data descriptor could take precedence over the dict).
    Ref dict(PyObject_GenericGetDict(module.p, nullptr));
    PyObject* params = dict.p ? PyDict_GetItemWithError(dict.p, g_parameters_name) : nullptr;
    PyObject* children = params ? PyDict_GetItemWithError(dict.p, g_modules_name) : nullptr;
    if (children == nullptr || !PyDict_Check(params) || !PyDict_Check(children)) {
      PyErr_Clear();
      ok = false;
      break;
    }
    Py_ssize_t pos = 0;
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    // Borrowed references, from a dict this function owns; no Python code runs in the loops.
    while (PyDict_Next(params, &pos, &key, &value)) {
      if (value == Py_None) {
        continue;  // parameters() skips None entries too
      }
      // A type check through the MRO: THPVariable_Check's isinstance() goes through the
      // metaclass's __instancecheck__ for a Parameter (~0.1 us) and may throw.
      if (!PyObject_TypeCheck(value, reinterpret_cast<PyTypeObject*>(THPVariableClass))) {
        ok = false;
        break;
      }
      out.push_back(reinterpret_cast<uintptr_t>(THPVariable_Unpack(value).unsafeGetTensorImpl()));
    }
    pos = 0;
    while (ok && PyDict_Next(children, &pos, &key, &value)) {
      if (value != Py_None) {
        Py_INCREF(value);
        stack.push_back(value);
      }
    }
    ok = ok && out.size() <= cap;
  }
  for (PyObject* m : stack) {
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
