// wgan_ext::rmsprop_clip_, shared by its dispatcher definition and its CPU / CUDA kernels: the
// arguments, every check (all run before the first write, so an error leaves every tensor as
// it was), the scalars rounded the way torch.optim.RMSprop's single-tensor path rounds them, and
// the per-tensor ATen path for tensors the kernels cannot walk as one flat block.
#pragma once

#include "fused_clip.h"  // the supported dtypes, their names, bump_versions

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace wgan_ext::rmsprop {

struct Args {
  at::TensorList params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only;
  const std::optional<at::Tensor>& lr_tensor;
  double lr, alpha, eps, weight_decay, momentum;  // in the op's argument order
  bool centered, maximize;
  double lo, hi;
};

// One flat walk over memory is the elementwise update only if every tensor of the index is one
// gap-free block laid out like the parameter (size-1 dims may have any stride).
inline bool same_layout(const at::Tensor& p, const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  for (const auto d : c10::irange(p.dim())) {
    if (p.size(d) != 1 && p.stride(d) != t.stride(d)) return false;
  }
  return true;
}

// Parameter i and its state can be walked as one flat block.
inline bool walks_flat(const Args& a, size_t i) {
  const at::Tensor& p = a.params[i];
  return same_layout(p, p) && same_layout(p, a.grads[i]) && same_layout(p, a.square_avgs[i]) &&
      (!a.centered || same_layout(p, a.grad_avgs[i])) &&
      (a.momentum <= 0 || same_layout(p, a.momentum_buffers[i]));
}

// The kernels' per-dtype arrays: float, double, half, bfloat16.
inline int dtype_slot(at::ScalarType d) {
  return d == at::kFloat ? 0 : d == at::kDouble ? 1 : d == at::kHalf ? 2 : 3;
}

// Checks one list. `written`: in-place updates of inference tensors need InferenceMode.
inline void check_list(const char* name, at::TensorList list, at::TensorList params,
                       bool written, c10::Device device) {
  for (const auto i : c10::irange(list.size())) {
    const auto& t = list[i];
    TORCH_CHECK_TYPE(t.defined(), "rmsprop_clip_: ", name, "[", i, "] is undefined");
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, "rmsprop_clip_: ", name, "[", i,
        "] has layout ", layout_name(t.layout()), "; only dense (strided) tensors are supported");
    TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), "rmsprop_clip_: ", name, "[", i,
        "] has dtype ", dtype_name(t.scalar_type()),
        "; supported: torch.float16, torch.bfloat16, torch.float32, torch.float64");
    TORCH_CHECK_VALUE(t.device() == device, "rmsprop_clip_: all tensors must be on one device; ",
        "params[0] is on ", device, ", ", name, "[", i, "] on ", t.device());
    if (!params.empty() && list.data() != params.data()) {
      TORCH_CHECK_TYPE(t.scalar_type() == params[i].scalar_type(), "rmsprop_clip_: ", name, "[",
          i, "] has dtype ", dtype_name(t.scalar_type()), " but params[", i, "] has ",
          dtype_name(params[i].scalar_type()));
      TORCH_CHECK_VALUE(t.sizes() == params[i].sizes(), "rmsprop_clip_: ", name, "[", i,
          "] has shape ", t.sizes(), " but params[", i, "] has ", params[i].sizes());
    }
    TORCH_CHECK(!written || !t.is_inference() || c10::InferenceMode::is_enabled(),
        "rmsprop_clip_: ", name, "[", i, "] is an inference tensor; in-place updates to it are "
        "only allowed in InferenceMode");
  }
}

// Memory spans of every tensor the op reads or writes; any overlap that involves a written
// tensor (the same tensor twice included) is refused: the result would depend on the order.
inline void check_no_overlap(const Args& a) {
  struct Span { uintptr_t begin, end; bool written; };
  std::vector<Span> spans;
  auto add = [&](at::TensorList list, bool written) {
    for (const auto& t : list) {
      if (t.numel() == 0) continue;
      int64_t extent = 1;  // elements from the first to the last, strides are never negative
      for (const auto d : c10::irange(t.dim())) extent += (t.size(d) - 1) * t.stride(d);
      const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
      spans.push_back({begin, begin + static_cast<uintptr_t>(extent * t.element_size()), written});
    }
  };
  add(a.params, true); add(a.grads, false); add(a.square_avgs, true); add(a.grad_avgs, true);
  add(a.momentum_buffers, true); add(a.steps, true); add(a.clip_only, true);
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) { return x.begin < y.begin; });
  uintptr_t end_any = 0, end_written = 0;
  for (const auto& s : spans) {
    TORCH_CHECK_VALUE(s.begin >= (s.written ? end_any : end_written), "rmsprop_clip_: two of the "
        "tensors share memory and at least one of them is written (the same parameter twice, or "
        "a state tensor aliasing a parameter or gradient); every tensor must have its own memory");
    end_any = std::max(end_any, s.end);
    if (s.written) end_written = std::max(end_written, s.end);
  }
}

// Every argument check of the op. Raises TypeError / ValueError naming the argument and value.
inline void check_args(const Args& a, c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(std::isfinite(a.lo) && std::isfinite(a.hi) && a.lo <= a.hi,
      "rmsprop_clip_: needs finite bounds with lo <= hi, got lo=", a.lo, ", hi=", a.hi);
  TORCH_CHECK_VALUE(a.lr >= 0, "rmsprop_clip_: invalid learning rate: ", a.lr);
  TORCH_CHECK_VALUE(a.alpha >= 0, "rmsprop_clip_: invalid alpha value: ", a.alpha);
  TORCH_CHECK_VALUE(a.eps >= 0, "rmsprop_clip_: invalid epsilon value: ", a.eps);
  TORCH_CHECK_VALUE(a.weight_decay >= 0, "rmsprop_clip_: invalid weight_decay value: ", a.weight_decay);
  TORCH_CHECK_VALUE(a.momentum >= 0, "rmsprop_clip_: invalid momentum value: ", a.momentum);
  const size_t n = a.params.size();
  auto check_len = [&](const char* name, at::TensorList l, size_t want, const char* when) {
    TORCH_CHECK_VALUE(l.size() == want, "rmsprop_clip_: ", name, " has ", l.size(),
        " tensors, expected ", want, when);
  };
  check_len("grads", a.grads, n, " (one per parameter)");
  check_len("square_avgs", a.square_avgs, n, " (one per parameter)");
  check_len("steps", a.steps, n, " (one per parameter)");
  check_len("grad_avgs", a.grad_avgs, a.centered ? n : 0, a.centered ? " (centered)" : " (not centered)");
  check_len("momentum_buffers", a.momentum_buffers, a.momentum > 0 ? n : 0,
      a.momentum > 0 ? " (momentum > 0)" : " (momentum == 0)");
  const at::Tensor& first = n > 0 ? a.params[0] : (a.clip_only.empty() ? at::Tensor() : a.clip_only[0]);
  if (!first.defined()) return;  // nothing to do (and nothing else to check)
  const c10::Device device = first.device();
  TORCH_CHECK_VALUE(device.type() == device_type, "rmsprop_clip_: this kernel serves ",
      c10::DeviceTypeName(device_type), " tensors, got tensors on ", device);
  check_list("params", a.params, a.params, true, device);
  check_list("grads", a.grads, a.params, false, device);
  check_list("square_avgs", a.square_avgs, a.params, true, device);
  check_list("grad_avgs", a.grad_avgs, a.params, true, device);
  check_list("momentum_buffers", a.momentum_buffers, a.params, true, device);
  check_list("clip_only", a.clip_only, {}, true, device);
  for (const auto i : c10::irange(n)) {
    const auto& s = a.steps[i];
    TORCH_CHECK_TYPE(s.defined() && s.numel() == 1 && s.layout() == at::kStrided &&
        (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
        "rmsprop_clip_: steps[", i, "] must be a one-element float32 or float64 tensor");
    TORCH_CHECK_VALUE(s.device().is_cpu() || s.device() == device, "rmsprop_clip_: steps[", i,
        "] is on ", s.device(), "; steps live on the CPU or on the parameters' device ", device);
    TORCH_CHECK(!s.is_inference() || c10::InferenceMode::is_enabled(), "rmsprop_clip_: steps[",
        i, "] is an inference tensor; in-place updates to it are only allowed in InferenceMode");
  }
  if (a.lr_tensor.has_value() && a.lr_tensor->defined()) {
    const auto& lr = *a.lr_tensor;
    TORCH_CHECK_TYPE(lr.numel() == 1 && at::isFloatingType(lr.scalar_type()),
        "rmsprop_clip_: lr_tensor must be a one-element floating-point tensor, got dtype ",
        lr.scalar_type(), " with ", lr.numel(), " elements");
    TORCH_CHECK_VALUE(lr.device().is_cpu() || lr.device() == device, "rmsprop_clip_: lr_tensor "
        "is on ", lr.device(), "; it lives on the CPU or on the parameters' device ", device);
  }
  check_no_overlap(a);
}

// The host value of the learning rate (reads a device tensor: not for CUDA graph capture).
inline double host_lr(const Args& a) {
  if (a.lr_tensor.has_value() && a.lr_tensor->defined()) {
    const double lr = a.lr_tensor->item<double>();
    TORCH_CHECK_VALUE(lr >= 0, "rmsprop_clip_: invalid learning rate: ", lr);
    return lr;
  }
  return a.lr;
}

// Writes through data pointers bypass ADInplaceOrView: bump the versions by hand, so that a
// backward that saved one of these tensors fails as it would after the in-place ATen ops.
inline void bump_versions(const Args& a) {
  for (const auto* list : {&a.params, &a.square_avgs, &a.grad_avgs, &a.momentum_buffers,
                           &a.steps, &a.clip_only}) {
    wgan_ext::bump_versions(*list);
  }
}

// step += 1 for the steps kept on the host, in each step's own dtype (float or double).
inline void increment_host_steps(at::TensorList steps) {
  for (const auto& s : steps) {
    if (s.scalar_type() == at::kFloat) {
      *s.data_ptr<float>() += 1.0f;
    } else {
      *s.data_ptr<double>() += 1.0;
    }
  }
}

// torch.optim.RMSprop's single-tensor step for parameter i, with ATen's own ops (for the rare
// tensor that is not one dense block laid out like its parameter), then clamp_. Values are
// those of RMSprop by construction. Called below the autograd layer; `lr` already resolved.
inline void aten_step(const Args& a, size_t i, double lr) {
  at::Tensor p = a.params[i], sq = a.square_avgs[i];
  at::Tensor g = a.maximize ? a.grads[i].neg() : a.grads[i];
  if (a.weight_decay != 0) g = g.add(p, a.weight_decay);
  sq.mul_(a.alpha).addcmul_(g, g, 1 - a.alpha);
  at::Tensor avg;
  if (a.centered) {
    at::Tensor ga = a.grad_avgs[i];
    ga.lerp_(g, 1 - a.alpha);
    avg = sq.addcmul(ga, ga, -1).sqrt_();
  } else {
    avg = sq.sqrt();
  }
  avg.add_(a.eps);
  if (a.momentum > 0) {
    at::Tensor buf = a.momentum_buffers[i];
    buf.mul_(a.momentum).addcdiv_(g, avg);
    p.add_(buf, -lr);
  } else {
    p.addcdiv_(g, avg, -lr);
  }
  p.clamp_(a.lo, a.hi);
}

// Both kernels' last writes, after their own: the ATen path for what they did not walk (below
// autograd, so leaves that require grad are writable), device steps no block owns, host steps,
// then the version bumps.
inline void finish_with_aten(const Args& a, const std::vector<size_t>& by_aten,
                             at::TensorList clamp_aten, at::TensorList device_steps,
                             at::TensorList host_steps, double lr) {
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (const size_t i : by_aten) aten_step(a, i, lr);
    clamp_with_aten_(clamp_aten, a.lo, a.hi);
    for (const auto& s : device_steps) s.add_(1);
  }
  increment_host_steps(host_steps);
  bump_versions(a);
}

}  // namespace wgan_ext::rmsprop
