// CUDA kernel of wgan_ext::fused_clip_: a clamp functor over the multi-tensor driver, one launch
// per dtype (more only past one launch's argument space). The clamp is ATen's clamp_scalar
// kernel's: compare in opmath_t, NaN passed through (no fminf/fmaxf, which drop the NaN), so
// results are those of tensor.clamp_(lo, hi).
#include <Python.h>
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <c10/core/Scalar.h>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "multi_tensor_apply.cuh"

namespace wgan_ext::cuda {
namespace {

template <typename T, typename op_t>
__device__ __forceinline__ T clamp_one(T x, op_t lo, op_t hi) {
  const op_t v = static_cast<op_t>(x);
  if (v < lo) return static_cast<T>(lo);
  if (v > hi) return static_cast<T>(hi);
  return x;
}

template <typename T>
struct ClampFunctor {
  using op_t = at::opmath_type<T>;
  __device__ void operator()(const Meta<1>& m, int t, int64_t start, int n, op_t lo, op_t hi) const {
    T* p = static_cast<T*>(m.addresses[0][t]) + start;
    for_each_pack(n, pack_aligned(p), [&](int i, int count) {
      if (count == kILP) {
        Pack<T> r = *reinterpret_cast<Pack<T>*>(p + i);
#pragma unroll
        for (int k = 0; k < kILP; ++k) r.v[k] = clamp_one(r.v[k], lo, hi);
        *reinterpret_cast<Pack<T>*>(p + i) = r;
      } else {
        p[i] = clamp_one(p[i], lo, hi);
      }
    });
  }
};

}  // namespace

// Clamps checked CUDA tensors of one device on the current stream (also rmsprop_clip_'s
// clip-only tensors); graph-safe: no allocation, no host-to-device copy.
void clamp_cuda_(const std::vector<at::Tensor>& tensors, double lo, double hi) {
  std::vector<at::Tensor> by_dtype[4];  // float, double, half, bfloat16: each one launch
  std::vector<at::Tensor> by_aten;
  for (const auto& t : tensors) {
    if (t.numel() == 0) continue;
    if (!t.is_non_overlapping_and_dense()) {
      by_aten.push_back(t);  // rare: a slice that is not one dense block
      continue;
    }
    const auto d = t.scalar_type();
    by_dtype[d == at::kFloat ? 0 : d == at::kDouble ? 1 : d == at::kHalf ? 2 : 3].push_back(t);
  }
  if (by_dtype[0].empty() && by_dtype[1].empty() && by_dtype[2].empty() && by_dtype[3].empty() &&
      by_aten.empty()) return;
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  for (auto& group : by_dtype) {
    if (group.empty()) continue;
    WGAN_EXT_DISPATCH(group[0].scalar_type(), "fused_clip_", [&] {
      using op_t = at::opmath_type<scalar_t>;
      // Bounds as ATen's clamp converts them; check_bounds made sure they fit.
      multi_tensor_apply<1>({std::move(group)}, stream, ClampFunctor<scalar_t>(),
                            c10::Scalar(lo).to<op_t>(), c10::Scalar(hi).to<op_t>());
    });
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  for (const auto& t : by_aten) t.clamp_(lo, hi);
}

namespace {

void fused_clip_cuda(at::TensorList tensors, double lo, double hi) {
  check_clip(tensors, lo, hi);
  const Held held = unique_held(tensors);
  if (held.tensors.empty()) return;
  const c10::cuda::CUDAGuard guard(held.tensors[0].device());
  clamp_cuda_(held.tensors, lo, hi);
  bump_versions(held.tensors);
}

}  // namespace
}  // namespace wgan_ext::cuda

TORCH_LIBRARY_IMPL(wgan_ext, CUDA, m) {
  m.impl("fused_clip_", &wgan_ext::cuda::fused_clip_cuda);
}

// `import wgan_ext._C_cuda` loads this library (see ops.cpp); the module itself is empty.
extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
