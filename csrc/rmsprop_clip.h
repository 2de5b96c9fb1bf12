// wgan_ext::rmsprop_clip_, shared by its CPU and CUDA kernels: the arguments, every check (all
// before the first write), and torch.optim.RMSprop's own ATen ops for a parameter whose state is
// not laid out like it (the kernels walk each parameter and its state as one flat block).
#pragma once

#include "checks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cfloat>
#include <optional>

namespace wgan_ext {

struct RMSpropArgs {
  at::TensorList params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only;
  const std::optional<at::Tensor>& lr_tensor;
  double lr, alpha, eps, weight_decay, momentum;  // in the op's argument order
  bool centered, maximize;
  double lo, hi;

  bool has_lr_tensor() const { return lr_tensor.has_value() && lr_tensor->defined(); }
};

// One flat walk is the elementwise update only if `t` is one gap-free block laid out like `p`.
inline bool same_layout(const at::Tensor& p, const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  for (const auto d : c10::irange(p.dim())) {
    if (p.size(d) != 1 && p.stride(d) != t.stride(d)) return false;
  }
  return true;
}

inline bool walks_flat(const RMSpropArgs& a, size_t i) {
  const at::Tensor& p = a.params[i];
  return same_layout(p, p) && same_layout(p, a.grads[i]) && same_layout(p, a.square_avgs[i]) &&
      (!a.centered || same_layout(p, a.grad_avgs[i])) &&
      (a.momentum <= 0 || same_layout(p, a.momentum_buffers[i]));
}

// Any overlap that involves a written tensor (the same tensor twice included) is refused: the
// result would depend on the order of the writes.
inline void check_no_overlap(const RMSpropArgs& a) {
  struct Span { uintptr_t begin, end; bool written; };
  std::vector<Span> spans;
  auto add = [&](at::TensorList list, bool written) {
    for (const auto& t : list) {
      if (t.numel() == 0) continue;
      int64_t extent = 1;
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

// The per-tensor checks: by the Autograd kernel, before the dispatcher's Negative or ZeroTensor
// handling could see a tensor (tensors may be fake there: no sizes, no data).
inline void check_rmsprop_tensors(const RMSpropArgs& a) {
  const struct { const char* name; at::TensorList list; bool written; } lists[] = {
      {"params", a.params, true}, {"grads", a.grads, false}, {"square_avgs", a.square_avgs, true},
      {"grad_avgs", a.grad_avgs, true}, {"momentum_buffers", a.momentum_buffers, true},
      {"clip_only", a.clip_only, true}};
  const at::Tensor* first = nullptr;
  for (const auto& l : lists) {
    for (const auto i : c10::irange(l.list.size())) {
      const at::Tensor& t = l.list[i];
      check_tensor(t, "rmsprop_clip_", l.name, i, l.written);
      if (first == nullptr) first = &t;
      TORCH_CHECK_VALUE(t.device() == first->device(), "rmsprop_clip_: all tensors must be on one "
          "device; got ", first->device(), " and ", l.name, "[", i, "] on ", t.device());
    }
  }
}

// Every check of the op, by the kernel of `device_type`; raises naming the argument and value.
inline void check_rmsprop(const RMSpropArgs& a, c10::DeviceType device_type) {
  const char* op = "rmsprop_clip_";
  TORCH_CHECK_VALUE(a.lr >= 0, op, ": invalid learning rate: ", a.lr);
  TORCH_CHECK_VALUE(a.alpha >= 0, op, ": invalid alpha value: ", a.alpha);
  TORCH_CHECK_VALUE(a.eps >= 0, op, ": invalid epsilon value: ", a.eps);
  TORCH_CHECK_VALUE(a.weight_decay >= 0, op, ": invalid weight_decay value: ", a.weight_decay);
  TORCH_CHECK_VALUE(a.momentum >= 0, op, ": invalid momentum value: ", a.momentum);
  const size_t n = a.params.size();
  auto check_len = [&](const char* name, at::TensorList l, size_t want, const char* when) {
    TORCH_CHECK_VALUE(l.size() == want, op, ": ", name, " has ", l.size(), " tensors, expected ",
        want, when);
  };
  check_len("grads", a.grads, n, " (one per parameter)");
  check_len("square_avgs", a.square_avgs, n, " (one per parameter)");
  check_len("steps", a.steps, n, " (one per parameter)");
  check_len("grad_avgs", a.grad_avgs, a.centered ? n : 0, a.centered ? " (centered)" : " (not centered)");
  check_len("momentum_buffers", a.momentum_buffers, a.momentum > 0 ? n : 0,
      a.momentum > 0 ? " (momentum > 0)" : " (momentum == 0)");
  check_rmsprop_tensors(a);
  const std::pair<const char*, at::TensorList> state[] = {{"grads", a.grads},
      {"square_avgs", a.square_avgs}, {"grad_avgs", a.grad_avgs},
      {"momentum_buffers", a.momentum_buffers}};
  for (const auto& [name, list] : state) {  // laid out like their parameters
    for (const auto i : c10::irange(list.size())) {
      const at::Tensor& t = list[i];
      TORCH_CHECK_TYPE(t.scalar_type() == a.params[i].scalar_type(), op, ": ", name, "[", i,
          "] has dtype ", dtype_name(t.scalar_type()), " but params[", i, "] has ",
          dtype_name(a.params[i].scalar_type()));
      TORCH_CHECK_VALUE(t.sizes() == a.params[i].sizes(), op, ": ", name, "[", i,
          "] has shape ", t.sizes(), " but params[", i, "] has ", a.params[i].sizes());
    }
  }
  const at::Tensor* first = !a.params.empty() ? &a.params[0]
      : !a.clip_only.empty() ? &a.clip_only[0] : nullptr;
  check_bounds(a.lo, a.hi, op, a.params, "params");
  check_bounds(a.lo, a.hi, op, a.clip_only, "clip_only");
  if (first == nullptr) return;  // nothing to write
  const c10::Device device = first->device();
  TORCH_CHECK_VALUE(device.type() == device_type, op, ": this kernel serves ",
      c10::DeviceTypeName(device_type), " tensors, got tensors on ", device);
  for (const auto i : c10::irange(n)) {
    const auto& s = a.steps[i];
    TORCH_CHECK_TYPE(s.defined() && s.numel() == 1 && s.layout() == at::kStrided &&
        (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
        op, ": steps[", i, "] must be a one-element float32 or float64 tensor");
    TORCH_CHECK_VALUE(s.device().is_cpu() || s.device() == device, op, ": steps[", i, "] is on ",
        s.device(), "; steps live on the CPU or on the parameters' device ", device);
    TORCH_CHECK(!s.is_inference() || c10::InferenceMode::is_enabled(), op, ": steps[", i,
        "] is an inference tensor; in-place updates to it are only allowed in InferenceMode");
  }
  if (a.has_lr_tensor()) {
    const auto& lr = *a.lr_tensor;
    TORCH_CHECK_TYPE(lr.numel() == 1 && (lr.scalar_type() == at::kFloat ||
        lr.scalar_type() == at::kDouble), op, ": lr_tensor must be a one-element float32 or "
        "float64 tensor, got dtype ", lr.scalar_type(), " with ", lr.numel(), " elements");
    TORCH_CHECK_VALUE(lr.device().is_cpu() || lr.device() == device, op, ": lr_tensor is on ",
        lr.device(), "; it lives on the CPU or on the parameters' device ", device);
  }
  check_no_overlap(a);
  // ATen converts each hyperparameter to the parameters' opmath type (float but for float64).
  const bool all_double = std::all_of(a.params.begin(), a.params.end(),
      [](const at::Tensor& p) { return p.scalar_type() == at::kDouble; });
  for (const double v : {a.lr, a.alpha, a.eps, a.weight_decay, a.momentum}) {
    TORCH_CHECK_VALUE(all_double || v <= FLT_MAX, op, ": hyperparameter ", v,
        " cannot be converted to type float without overflow");
  }
}

// Every tensor's storage, held for the call: the op runs without the GIL, so another thread may
// replace a parameter's memory (p.data = ...) while a kernel writes it.
inline Held hold_all(const RMSpropArgs& a) {
  Held held;
  for (const auto* list : {&a.params, &a.grads, &a.square_avgs, &a.grad_avgs,
                           &a.momentum_buffers, &a.clip_only}) {
    for (const auto& t : *list) held.add(t);
  }
  return held;
}

// The learning rate on the host (reads a device tensor: not under CUDA graph capture).
inline double host_lr(const RMSpropArgs& a) {
  if (!a.has_lr_tensor()) return a.lr;
  const double lr = a.lr_tensor->item<double>();
  TORCH_CHECK_VALUE(lr >= 0, "rmsprop_clip_: invalid learning rate: ", lr);
  return lr;
}

// torch.optim.RMSprop's single-tensor step of parameter i with ATen's ops, then clamp_: for the
// rare parameter the kernels cannot walk flat. Called below autograd.
inline void aten_step(const RMSpropArgs& a, size_t i, double lr) {
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

// What both kernels do after their own writes: ATen's step for what they did not walk, ATen's
// clamp_ for clip-only tensors that are not one block, step += 1 (host steps in place, device
// steps in one foreach launch, which a CUDA graph captures), and the version bumps.
inline void finish_rmsprop(const RMSpropArgs& a, const std::vector<size_t>& by_aten,
                           const std::vector<at::Tensor>& clamp_by_aten, double lr) {
  std::vector<at::Tensor> device_steps;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (const size_t i : by_aten) aten_step(a, i, lr);
    for (const auto& t : clamp_by_aten) t.clamp_(a.lo, a.hi);
    for (const auto& s : a.steps) {
      if (!s.is_cpu()) {
        device_steps.push_back(s);
      } else if (s.scalar_type() == at::kFloat) {
        *s.mutable_data_ptr<float>() += 1.0f;
      } else {
        *s.mutable_data_ptr<double>() += 1.0;
      }
    }
    if (!device_steps.empty()) at::_foreach_add_(device_steps, 1);
  }
  for (const auto* list : {&a.params, &a.square_avgs, &a.grad_avgs, &a.momentum_buffers,
                           &a.steps, &a.clip_only}) {
    bump_versions(*list);
  }
}

}  // namespace wgan_ext
