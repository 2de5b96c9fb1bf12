// The module-init function of a compiled library that is also a Python module. Its name comes
// from TORCH_EXTENSION_NAME, which torch.utils.cpp_extension sets: `_C` / `_C_cuda` for the pip
// build, `wgan_ext_C` / `wgan_ext_C_cuda` for the build on first use.
#pragma once

#include <Python.h>

#define WGAN_EXT_CONCAT_(a, b) a##b
#define WGAN_EXT_CONCAT(a, b) WGAN_EXT_CONCAT_(a, b)
#define WGAN_EXT_STR_(a) #a
#define WGAN_EXT_STR(a) WGAN_EXT_STR_(a)

#define WGAN_EXT_PYTHON_MODULE(doc, methods)                                                  \
  extern "C" PyObject* WGAN_EXT_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {                  \
    static PyModuleDef def = {PyModuleDef_HEAD_INIT, WGAN_EXT_STR(TORCH_EXTENSION_NAME), doc, \
                              -1, methods};                                                    \
    return PyModule_Create(&def);                                                              \
  }
