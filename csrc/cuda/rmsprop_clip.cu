// CUDA kernel of wgan_ext::rmsprop_clip_: RMSprop's update and the clamp as one functor over the
// multi-tensor driver (parameter, gradient, square_avg, grad_avg, momentum buffer), one pass per
// element in opmath_t. A learning rate in a device tensor is read by the kernel (a scheduler may
// change it between CUDA graph replays); device steps are incremented by one foreach launch.
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>

#include "../rmsprop_clip.h"
#include "multi_tensor_apply.cuh"

namespace wgan_ext::cuda {

void clamp_cuda_(const std::vector<at::Tensor>& tensors, double lo, double hi);  // fused_clip.cu

namespace {

template <typename op_t>
struct Hyper {
  op_t sign, weight_decay, alpha, one_minus_alpha, eps, momentum, neg_lr, lo, hi;
  bool centered, has_momentum, lerp_low;  // lerp_low: 1 - alpha < 0.5
  const void* lr;  // a device learning rate, or nullptr
  bool lr_double;
};

// A product nvcc may not fuse into the following add.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
struct RMSpropFunctor {
  using op_t = at::opmath_type<T>;

  // The CPU kernel's arithmetic (cpu/rmsprop_clip.cpp): a fused multiply-add where ATen's
  // vectorised kernels have one, one rounding per stored value.
  __device__ static void update(T& p, T g_in, T& sq, T& ga, T& buf, const Hyper<op_t>& h, op_t neg_lr) {
    op_t g = static_cast<op_t>(g_in) * h.sign;
    op_t vp = static_cast<op_t>(p);
    if (h.weight_decay != 0) g = ::fma(h.weight_decay, vp, g);  // uniform: no divergence
    const op_t s = ::fma(h.one_minus_alpha * g, g, static_cast<op_t>(sq) * h.alpha);
    op_t avg;
    if (h.centered) {
      op_t a = static_cast<op_t>(ga);
      a = h.lerp_low ? ::fma(h.one_minus_alpha, g - a, a) : ::fma(h.one_minus_alpha - 1, g - a, g);
      ga = static_cast<T>(a);
      avg = ::sqrt(::fma(-a, a, s)) + h.eps;
    } else {
      avg = ::sqrt(s) + h.eps;
    }
    sq = static_cast<T>(s);
    if (h.has_momentum) {
      const op_t b = mul_rn(static_cast<op_t>(buf), h.momentum) + g / avg;  // no fma: as ATen
      buf = static_cast<T>(b);
      vp = ::fma(neg_lr, b, vp);
    } else {
      vp = vp + neg_lr * g / avg;
    }
    vp = vp < h.lo ? h.lo : vp;  // compare-and-select: a NaN stays NaN
    p = static_cast<T>(vp > h.hi ? h.hi : vp);
  }

  __device__ void operator()(const Meta<5>& m, int t, int64_t start, int n, Hyper<op_t> h) const {
    op_t neg_lr = h.neg_lr;
    if (h.lr != nullptr) {
      neg_lr = static_cast<op_t>(h.lr_double ? -*static_cast<const double*>(h.lr)
                                              : -*static_cast<const float*>(h.lr));
    }
    T* p = static_cast<T*>(m.addresses[0][t]) + start;
    const T* g = static_cast<const T*>(m.addresses[1][t]) + start;
    T* sq = static_cast<T*>(m.addresses[2][t]) + start;
    T* ga = h.centered ? static_cast<T*>(m.addresses[3][t]) + start : nullptr;
    T* buf = h.has_momentum ? static_cast<T*>(m.addresses[4][t]) + start : nullptr;
    const bool aligned = pack_aligned(p) && pack_aligned(g) && pack_aligned(sq) &&
        pack_aligned(ga) && pack_aligned(buf);
    for_each_pack(n, aligned, [&](int i, int count) {
      Pack<T> vp, vg, vs, va, vb;  // loaded whole, or element by element for the tail
      auto load = [&](Pack<T>& dst, const T* src) {
        if (count == kILP) dst = *reinterpret_cast<const Pack<T>*>(src + i);
        else dst.v[0] = src[i];
      };
      auto store = [&](T* dst, const Pack<T>& src) {
        if (count == kILP) *reinterpret_cast<Pack<T>*>(dst + i) = src;
        else dst[i] = src.v[0];
      };
      load(vp, p); load(vg, g); load(vs, sq);
      if (h.centered) load(va, ga);
      if (h.has_momentum) load(vb, buf);
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        if (k < count) update(vp.v[k], vg.v[k], vs.v[k], va.v[k], vb.v[k], h, neg_lr);
      }
      store(p, vp); store(sq, vs);
      if (h.centered) store(ga, va);
      if (h.has_momentum) store(buf, vb);
    });
  }
};

void rmsprop_clip_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
    at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList steps,
    at::TensorList clip_only, const std::optional<at::Tensor>& lr_tensor, double lr,
    double alpha, double eps, double weight_decay, double momentum, bool centered,
    bool maximize, double lo, double hi) {
  const RMSpropArgs a{params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only,
                      lr_tensor, lr, alpha, eps, weight_decay, momentum, centered, maximize, lo, hi};
  check_rmsprop(a, c10::DeviceType::CUDA);
  if (params.empty() && clip_only.empty()) return;
  const c10::cuda::CUDAGuard guard(params.empty() ? clip_only[0].device() : params[0].device());
  const Held held = hold_all(a);
  const bool lr_on_device = a.has_lr_tensor() && lr_tensor->is_cuda();
  std::vector<size_t> by_aten;
  std::array<std::vector<at::Tensor>, 5> by_dtype[4];  // float, double, half, bfloat16
  for (const auto i : c10::irange(params.size())) {
    if (params[i].numel() == 0) continue;
    if (!walks_flat(a, i)) {
      by_aten.push_back(i);
      continue;
    }
    const auto d = params[i].scalar_type();
    auto& lists = by_dtype[d == at::kFloat ? 0 : d == at::kDouble ? 1 : d == at::kHalf ? 2 : 3];
    lists[0].push_back(params[i]);
    lists[1].push_back(grads[i]);
    lists[2].push_back(square_avgs[i]);
    if (centered) lists[3].push_back(grad_avgs[i]);
    if (momentum > 0) lists[4].push_back(momentum_buffers[i]);
  }
  // A captured graph replays device work only: host steps and a host read of the learning rate
  // would not be replayed.
  const bool capturing =
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  TORCH_CHECK(!capturing || std::all_of(steps.begin(), steps.end(),
      [](const at::Tensor& s) { return s.is_cuda(); }), "rmsprop_clip_: under CUDA graph capture "
      "the steps must be CUDA tensors (capturable=True)");
  TORCH_CHECK(!capturing || !lr_on_device || by_aten.empty(), "rmsprop_clip_: parameters whose "
      "state is not laid out like them cannot be captured with a tensor learning rate");
  const double lr_host = lr_on_device && by_aten.empty() ? 0.0 : host_lr(a);
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  for (auto& lists : by_dtype) {
    if (lists[0].empty()) continue;
    WGAN_EXT_DISPATCH(lists[0][0].scalar_type(), "rmsprop_clip_", [&] {
      using op_t = at::opmath_type<scalar_t>;
      const Hyper<op_t> h{maximize ? op_t(-1) : op_t(1), op_t(weight_decay), op_t(alpha),
          op_t(1 - alpha), op_t(eps), op_t(momentum), op_t(-lr_host),
          op_t(c10::Scalar(lo).to<scalar_t>()), op_t(c10::Scalar(hi).to<scalar_t>()), centered,
          momentum > 0, 1 - alpha < 0.5, lr_on_device ? lr_tensor->const_data_ptr() : nullptr,
          lr_on_device && lr_tensor->scalar_type() == at::kDouble};
      multi_tensor_apply<5>(lists, stream, RMSpropFunctor<scalar_t>(), h);
    });
  }
  clamp_cuda_(std::vector<at::Tensor>(clip_only.begin(), clip_only.end()), lo, hi);
  finish_rmsprop(a, by_aten, {}, lr_host);
}

}  // namespace
}  // namespace wgan_ext::cuda

TORCH_LIBRARY_IMPL(wgan_ext, CUDA, m) {
  m.impl("rmsprop_clip_", &wgan_ext::cuda::rmsprop_clip_cuda);
}
