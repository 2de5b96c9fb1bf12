// CPU kernel of wgan_ext::rmsprop_clip_: RMSprop's update and the clamp in one pass over each
// parameter and its state, with float opmath for float16/bfloat16 as ATen's CPU fused optimizers
// do, vectorised for AVX-512, AVX2 and baseline x86-64 (target_clones) and picked at load time.
// Four loop versions per dtype (centered x momentum), the other modes runtime values. It follows
// torch.optim.RMSprop's order of operations but not its roundings (one rounding per ATen op
// there, one per stored value here): results agree within 8 ulps of the update's largest
// operand per step (tests/test_optim.py).
#include "../rmsprop_clip.h"
#include "vectorize.h"

#include <torch/library.h>

#include <cmath>

namespace wgan_ext {
namespace {

template <typename op_t>
struct Hyper {
  op_t sign, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr, lo, hi;
  bool has_weight_decay, centered, has_momentum, lerp_low;  // lerp_low: 1 - alpha < 0.5
};

// Elements [begin, end) of one parameter and its state, in opmath (float for 16-bit dtypes):
// torch.optim.RMSprop's single-tensor step, then the clamp, with a fused multiply-add where
// ATen's vectorised CPU kernels have one (so a cancellation, e.g. in g + wd * p, rounds alike).
// The two modes that change what is stored are template flags, picked once per tensor; the rest
// are loop-invariant values, so the compiler vectorises every version (an at::vec::Vectorized
// loop, built without ATen's per-capability flags, measured 20x slower than this one).
template <typename T, bool kCentered, bool kMomentum>
WGAN_EXT_CLONES void step_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ sq,
                                T* __restrict__ ga, T* __restrict__ buf, int64_t begin,
                                int64_t end, const Hyper<at::opmath_type<T>> h) {
  // __restrict__: check_no_overlap refused any overlap, and without it the vectoriser gives up
  // on five pointers' alias checks. `h` by value keeps its fields loop-invariant.
  using op_t = at::opmath_type<T>;
  for (int64_t i = begin; i < end; ++i) {
    op_t vp = static_cast<op_t>(p[i]);
    op_t vg = static_cast<op_t>(g[i]) * h.sign;
    if (h.has_weight_decay) vg = std::fma(h.weight_decay, vp, vg);
    const op_t vs = std::fma(h.one_minus_alpha * vg, vg, static_cast<op_t>(sq[i]) * h.alpha);
    sq[i] = static_cast<T>(vs);
    op_t avg;
    if constexpr (kCentered) {
      op_t va = static_cast<op_t>(ga[i]);
      va = h.lerp_low ? std::fma(h.one_minus_alpha, vg - va, va)
                      : std::fma(h.one_minus_alpha - 1, vg - va, vg);
      ga[i] = static_cast<T>(va);
      avg = std::sqrt(std::fma(-va, va, vs)) + h.eps;
    } else {
      avg = std::sqrt(vs) + h.eps;
    }
    if constexpr (kMomentum) {
      const op_t vb = static_cast<op_t>(buf[i]) * h.momentum + vg / avg;
      buf[i] = static_cast<T>(vb);
      vp = std::fma(h.neg_lr, vb, vp);
    } else {
      vp = vp + h.neg_lr * vg / avg;
    }
    vp = vp < h.lo ? h.lo : vp;  // compare-and-select: a NaN stays NaN
    p[i] = static_cast<T>(vp > h.hi ? h.hi : vp);
  }
}

template <typename T>
void step_tensor(T* p, const T* g, T* sq, T* ga, T* buf, int64_t n,
                 const Hyper<at::opmath_type<T>>& h) {
  auto run = [&](auto kernel) {
    for_range(n, [&](int64_t b, int64_t e) { kernel(p, g, sq, ga, buf, b, e, h); });
  };
  if (h.centered) {
    h.has_momentum ? run(step_range<T, true, true>) : run(step_range<T, true, false>);
  } else {
    h.has_momentum ? run(step_range<T, false, true>) : run(step_range<T, false, false>);
  }
}

// Clip-only tensors: the clamp of the same vector math.
template <typename T>
void clamp_range(T* p, int64_t begin, int64_t end, const Hyper<at::opmath_type<T>>& h) {
  for (int64_t i = begin; i < end; ++i) {
    const auto v = static_cast<at::opmath_type<T>>(p[i]);
    if (v < h.lo) p[i] = static_cast<T>(h.lo);  // compare-and-select: a NaN keeps its bits
    else if (v > h.hi) p[i] = static_cast<T>(h.hi);
  }
}

void rmsprop_clip_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
    at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList steps,
    at::TensorList clip_only, const std::optional<at::Tensor>& lr_tensor, double lr,
    double alpha, double eps, double weight_decay, double momentum, bool centered,
    bool maximize, double lo, double hi) {
  const RMSpropArgs a{params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only,
                      lr_tensor, lr, alpha, eps, weight_decay, momentum, centered, maximize, lo, hi};
  check_rmsprop(a, c10::DeviceType::CPU);
  const double lr_value = host_lr(a);
  const Held held = hold_all(a);
  std::vector<size_t> by_aten;
  std::vector<at::Tensor> clamp_by_aten;
  for (const auto i : c10::irange(params.size())) {
    const auto& p = params[i];
    if (p.numel() == 0) continue;
    if (!walks_flat(a, i)) {
      by_aten.push_back(i);
      continue;
    }
    WGAN_EXT_DISPATCH(p.scalar_type(), "rmsprop_clip_", [&] {
      using op_t = at::opmath_type<scalar_t>;
      const Hyper<op_t> h{maximize ? op_t(-1) : op_t(1), op_t(weight_decay), op_t(alpha),
          op_t(1 - alpha), op_t(eps), op_t(momentum), op_t(-lr_value), op_t(c10::Scalar(lo).to<scalar_t>()),
          op_t(c10::Scalar(hi).to<scalar_t>()), weight_decay != 0, centered, momentum > 0,
          1 - alpha < 0.5};
      auto* pp = p.mutable_data_ptr<scalar_t>();
      const auto* gp = grads[i].const_data_ptr<scalar_t>();
      auto* sp = square_avgs[i].mutable_data_ptr<scalar_t>();
      auto* ap = centered ? grad_avgs[i].mutable_data_ptr<scalar_t>() : nullptr;
      auto* bp = momentum > 0 ? momentum_buffers[i].mutable_data_ptr<scalar_t>() : nullptr;
      step_tensor<scalar_t>(pp, gp, sp, ap, bp, p.numel(), h);
    });
  }
  for (const auto& c : clip_only) {
    if (c.numel() == 0) continue;
    if (!c.is_non_overlapping_and_dense()) {
      clamp_by_aten.push_back(c);
      continue;
    }
    WGAN_EXT_DISPATCH(c.scalar_type(), "rmsprop_clip_", [&] {
      using op_t = at::opmath_type<scalar_t>;
      Hyper<op_t> h{};
      h.lo = op_t(c10::Scalar(lo).to<scalar_t>());
      h.hi = op_t(c10::Scalar(hi).to<scalar_t>());
      auto* cp = c.mutable_data_ptr<scalar_t>();
      for_range(c.numel(), [&](int64_t b, int64_t e) { clamp_range<scalar_t>(cp, b, e, h); });
    });
  }
  finish_rmsprop(a, by_aten, clamp_by_aten, lr_value);
}

}  // namespace
}  // namespace wgan_ext

TORCH_LIBRARY_IMPL(wgan_ext, CPU, m) {
  m.impl("rmsprop_clip_", &wgan_ext::rmsprop_clip_cpu);
}
