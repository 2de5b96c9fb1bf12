// wgan_ext::rmsprop_clip_ -- the dispatcher-level definition.
//
// One RMSprop step (torch.optim.RMSprop's update of every parameter that has a gradient) and the
// clamp of every parameter to [lo, hi], with or without a gradient, in one pass per tensor.
// Every list the op writes carries its own alias set (Tensor(a!)[] ...), so functionalization,
// torch.compile and opcheck see what is mutated. Backends register their kernels separately:
// csrc/cpu/ (in this library) and csrc/cuda/ (in the optional _C_cuda library).
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "rmsprop_clip.h"

namespace wgan_ext::rmsprop {
namespace {

// The update is a projection between optimizer steps, not part of any graph: the autograd
// layer only steps aside (no grad_fn, no leaf check: parameters that require grad are written
// without torch.no_grad()); the backend kernels bump the version counters of what they write.
void rmsprop_clip_autograd(at::TensorList params, at::TensorList grads,
    at::TensorList square_avgs, at::TensorList grad_avgs, at::TensorList momentum_buffers,
    at::TensorList steps, at::TensorList clip_only, const std::optional<at::Tensor>& lr_tensor,
    double lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
    bool maximize, double lo, double hi) {
  // A list spanning devices would be routed to one backend's kernel; name the culprit here.
  const at::Tensor* first = nullptr;
  for (const auto* list : {&params, &grads, &square_avgs, &grad_avgs, &momentum_buffers, &clip_only}) {
    for (const auto& t : *list) {
      if (!t.defined()) continue;
      if (first == nullptr) first = &t;
      TORCH_CHECK_VALUE(t.device() == first->device(), "rmsprop_clip_: all tensors must be on one "
          "device, got ", first->device(), " and ", t.device());
    }
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wgan_ext::rmsprop_clip_", "")
                       .typed<decltype(rmsprop_clip_autograd)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.call(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only, lr_tensor,
          lr, alpha, eps, weight_decay, momentum, centered, maximize, lo, hi);
}

}  // namespace
}  // namespace wgan_ext::rmsprop

TORCH_LIBRARY_FRAGMENT(wgan_ext, m) {
  m.def(
      "rmsprop_clip_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, "
      "Tensor(c!)[] grad_avgs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, "
      "Tensor(f!)[] clip_only, Tensor? lr_tensor, float lr, float alpha, float eps, "
      "float weight_decay, float momentum, bool centered, bool maximize, float lo, float hi) -> ()");
}

TORCH_LIBRARY_IMPL(wgan_ext, Autograd, m) {
  m.impl("rmsprop_clip_", &wgan_ext::rmsprop::rmsprop_clip_autograd);
}
