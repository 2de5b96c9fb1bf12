// wgan_ext::fused_clip_ -- the dispatcher-level definition.
//
// The schema marks the tensor list as mutated in place (Tensor(a!)[]) and returns nothing, like
// aten::_foreach_clamp_min_, so functionalization, torch.compile and opcheck treat it correctly.
// Backends register their kernels apart: cpu/ (in this library) and cuda/ (in the optional
// _C_cuda library, which a CPU-only machine never loads).
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "fused_clip.h"

namespace wgan_ext {
namespace {

// Clipping projects the weights between optimizer steps; it is not part of any graph. So the
// autograd layer only steps aside: no grad_fn, no leaf check (a leaf that requires grad may be
// clipped without torch.no_grad()); the backend kernel bumps the version counters that a
// backward relies on to detect the write.
void fused_clip_autograd(at::TensorList tensors, double lo, double hi) {
  // A list spanning devices would reach one backend's kernel (or the meta kernel, which checks
  // nothing): refuse it before any backend sees it. wgan_ext.fused_clip_ groups by device.
  for (const auto& t : tensors) {
    TORCH_CHECK_TYPE(t.defined(), "fused_clip_: undefined tensor");
  }
  check_one_device(tensors);
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
}

TORCH_LIBRARY_IMPL(wgan_ext, Autograd, m) {
  m.impl("fused_clip_", &wgan_ext::fused_clip_autograd);
}
