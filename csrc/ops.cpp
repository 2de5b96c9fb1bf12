// The dispatcher-level definition of wgan_ext's two ops. Each schema marks the lists it writes
// (Tensor(a!)[]) and returns nothing, so functionalization, torch.compile and opcheck see the
// mutation. Kernels live apart: cpu/ in this library, cuda/ in the optional _C_cuda library, which
// a CPU-only machine never loads. The checks (checks.h, rmsprop_clip.h) run here and again in
// every kernel.
#include <Python.h>
#include <torch/library.h>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

#include "rmsprop_clip.h"

namespace wgan_ext {
namespace {

// The clip projects the weights between optimizer steps; it is not part of any graph. So the
// autograd layer checks and steps aside: no grad_fn and no leaf check (a leaf that requires grad
// may be written without torch.no_grad()); the kernels bump the version counters a backward checks.
void fused_clip_autograd(at::TensorList tensors, double lo, double hi) {
  check_clip(tensors, lo, hi);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wgan_ext::fused_clip_", "")
                       .typed<void(at::TensorList, double, double)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.call(tensors, lo, hi);
}

void rmsprop_clip_autograd(at::TensorList params, at::TensorList grads,
    at::TensorList square_avgs, at::TensorList grad_avgs, at::TensorList momentum_buffers,
    at::TensorList steps, at::TensorList clip_only, const std::optional<at::Tensor>& lr_tensor,
    double lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
    bool maximize, double lo, double hi) {
  check_rmsprop_tensors({params, grads, square_avgs, grad_avgs, momentum_buffers, steps,
                         clip_only, lr_tensor, lr, alpha, eps, weight_decay, momentum, centered,
                         maximize, lo, hi});
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wgan_ext::rmsprop_clip_", "")
                       .typed<decltype(rmsprop_clip_autograd)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.call(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only, lr_tensor,
          lr, alpha, eps, weight_decay, momentum, centered, maximize, lo, hi);
}

}  // namespace
}  // namespace wgan_ext

TORCH_LIBRARY(wgan_ext, m) {
  m.def("fused_clip_(Tensor(a!)[] tensors, float lo, float hi) -> ()");
  m.def(
      "rmsprop_clip_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, "
      "Tensor(c!)[] grad_avgs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, "
      "Tensor(f!)[] clip_only, Tensor? lr_tensor, float lr, float alpha, float eps, "
      "float weight_decay, float momentum, bool centered, bool maximize, float lo, float hi) -> ()");
}

TORCH_LIBRARY_IMPL(wgan_ext, Autograd, m) {
  m.impl("fused_clip_", &wgan_ext::fused_clip_autograd);
  m.impl("rmsprop_clip_", &wgan_ext::rmsprop_clip_autograd);
}

// `import wgan_ext._C` loads this library, whose static initializers register the ops above
// (as pytorch/extension-cpp does); the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
