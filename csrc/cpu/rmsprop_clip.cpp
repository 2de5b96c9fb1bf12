// CPU kernel of wgan_ext::rmsprop_clip_: RMSprop's update and the clamp in one pass over each
// parameter and its state, in at::vec::Vectorized math with float opmath for float16/bfloat16, as
// ATen's CPU fused optimizers do. The modes are uniform branches per vector, not instantiations.
// It follows torch.optim.RMSprop's order of operations but not its roundings (one rounding per
// ATen op there, fused in float here): results agree within a few ulps (tests/test_optim.py).
#include "../rmsprop_clip.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>


namespace wgan_ext {
namespace {

using at::vec::Vectorized;
constexpr int64_t kGrainSize = 32768;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define WGAN_EXT_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WGAN_EXT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WGAN_EXT_CLONES
#endif

template <typename op_t>
struct Hyper {
  op_t sign, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr, lo, hi;
  bool has_weight_decay, centered, has_momentum;
};

// One vector of elements, in opmath: torch.optim.RMSprop's single-tensor step, then the clamp.
template <typename op_t>
inline void update(Vectorized<op_t>& p, Vectorized<op_t> g, Vectorized<op_t>& sq,
                   Vectorized<op_t>& ga, Vectorized<op_t>& buf, const Hyper<op_t>& h) {
  using V = Vectorized<op_t>;
  g = g * V(h.sign);
  if (h.has_weight_decay) g = g + p * V(h.weight_decay);
  sq = sq * V(h.alpha) + V(h.one_minus_alpha) * g * g;
  V avg;
  if (h.centered) {
    ga = ga + V(h.one_minus_alpha) * (g - ga);
    avg = (sq - ga * ga).sqrt() + V(h.eps);
  } else {
    avg = sq.sqrt() + V(h.eps);
  }
  if (h.has_momentum) {
    buf = buf * V(h.momentum) + g / avg;
    p = p + V(h.neg_lr) * buf;
  } else {
    p = p + V(h.neg_lr) * (g / avg);
  }
  p = at::vec::minimum(at::vec::maximum(p, V(h.lo)), V(h.hi));  // a NaN stays NaN
}

// Elements [begin, end) of one parameter and its state; ga/buf unused unless centered/momentum.
template <typename T>
WGAN_EXT_CLONES void step_range(T* p, const T* g, T* sq, T* ga, T* buf, int64_t begin,
                                int64_t end, const Hyper<at::opmath_type<T>>& h) {
  using op_t = at::opmath_type<T>;
  using VT = Vectorized<T>;
  using VO = Vectorized<op_t>;
  for (int64_t i = begin; i < end; i += VT::size()) {
    const int n = static_cast<int>(std::min<int64_t>(VT::size(), end - i));
    const VT vp = VT::loadu(p + i, n), vg = VT::loadu(g + i, n), vs = VT::loadu(sq + i, n);
    const VT va = h.centered ? VT::loadu(ga + i, n) : VT(0);
    const VT vb = h.has_momentum ? VT::loadu(buf + i, n) : VT(0);
    VT rp, rs, ra, rb;
    if constexpr (std::is_same_v<T, op_t>) {
      VO p0 = vp, s0 = vs, a0 = va, b0 = vb;
      update<op_t>(p0, vg, s0, a0, b0, h);
      rp = p0, rs = s0, ra = a0, rb = b0;
    } else {  // 16-bit: two float vectors per vector of T
      auto [p0, p1] = at::vec::convert_to_float<T>(vp);
      auto [g0, g1] = at::vec::convert_to_float<T>(vg);
      auto [s0, s1] = at::vec::convert_to_float<T>(vs);
      auto [a0, a1] = at::vec::convert_to_float<T>(va);
      auto [b0, b1] = at::vec::convert_to_float<T>(vb);
      update<op_t>(p0, g0, s0, a0, b0, h);
      update<op_t>(p1, g1, s1, a1, b1, h);
      rp = at::vec::convert_from_float<T>(p0, p1);
      rs = at::vec::convert_from_float<T>(s0, s1);
      ra = at::vec::convert_from_float<T>(a0, a1);
      rb = at::vec::convert_from_float<T>(b0, b1);
    }
    rp.store(p + i, n);
    rs.store(sq + i, n);
    if (h.centered) ra.store(ga + i, n);
    if (h.has_momentum) rb.store(buf + i, n);
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

template <typename F>
void for_range(int64_t n, const F& f) {
  if (n <= kGrainSize) {
    f(0, n);
  } else {
    at::parallel_for(0, n, kGrainSize, f);
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
          op_t(c10::Scalar(hi).to<scalar_t>()), weight_decay != 0, centered, momentum > 0};
      auto* pp = p.mutable_data_ptr<scalar_t>();
      const auto* gp = grads[i].const_data_ptr<scalar_t>();
      auto* sp = square_avgs[i].mutable_data_ptr<scalar_t>();
      auto* ap = centered ? grad_avgs[i].mutable_data_ptr<scalar_t>() : nullptr;
      auto* bp = momentum > 0 ? momentum_buffers[i].mutable_data_ptr<scalar_t>() : nullptr;
      for_range(p.numel(), [&](int64_t b, int64_t e) { step_range<scalar_t>(pp, gp, sp, ap, bp, b, e, h); });
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
