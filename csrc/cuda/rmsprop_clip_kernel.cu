// CUDA kernel of wgan_ext::rmsprop_clip_: RMSprop's update and the clamp, one pass over each
// tensor, many tensors per launch.
//
// Multi-tensor apply in the manner of ATen's MultiTensorApply.cuh: the tensors' addresses and
// the block -> (tensor, chunk) map travel in the kernel's arguments (kKernelArgBytes: 32 KB with
// CUDA 13), so a launch reads no host-written table and a CUDA graph replays it as
// captured; a call with more tensors or chunks than one launch holds makes several launches.
// The functor is rmsprop_clip_math.h's update (the _rn intrinsics there are never contracted).
// The learning rate is read in the kernel when it is a device tensor (capturable: a scheduler
// may change it between replays), and device-resident steps are incremented by the block that
// owns their tensor's first chunk.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

#include "../rmsprop_clip.h"
#include "multi_tensor.h"  // kKernelArgBytes
#include "../rmsprop_clip_math.h"

namespace wgan_ext::rmsprop {
namespace {

constexpr int kThreads = 512;
constexpr int kILP = 4;                                // elements per thread per iteration
constexpr int64_t kChunk = int64_t{kThreads} * kILP * 8;  // elements per block
constexpr int kMaxTensors = cuda::kKernelArgBytes > 4096 ? 192 : 24;
constexpr int kMaxBlocks = cuda::kKernelArgBytes > 4096 ? 2560 : 320;

struct Meta {
  void* p[kMaxTensors];
  const void* g[kMaxTensors];  // nullptr: clip only
  void* sq[kMaxTensors];
  void* ga[kMaxTensors];
  void* buf[kMaxTensors];
  void* step[kMaxTensors];     // a device step to increment, or nullptr
  int64_t numel[kMaxTensors];
  uint8_t flags[kMaxTensors];  // kAligned | kStepDouble
  uint16_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};
static_assert(sizeof(Meta) + 256 <= cuda::kKernelArgBytes, "kernel arguments exceed the limit");
constexpr uint8_t kAligned = 1, kStepDouble = 2;

template <typename T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

// One element with ATen's CPU roundings (kFma: what its AVX2/AVX-512 kernels fuse).
template <typename T, bool kCentered, bool kMomentum>
__device__ __forceinline__ void step_one(T& p, T g, T& sq, T& ga, T& buf,
                                         const Scalars<at::opmath_type<T>>& s) {
  if (s.has_weight_decay) {  // the same for the whole grid
    update<T, true, true, kCentered, kMomentum>(p, g, sq, ga, buf, s);
  } else {
    update<T, true, false, kCentered, kMomentum>(p, g, sq, ga, buf, s);
  }
}

template <typename T, bool kCentered, bool kMomentum>
__global__ void __launch_bounds__(kThreads) rmsprop_clip_kernel(
    const __grid_constant__ Meta meta, Scalars<at::opmath_type<T>> s, const void* lr,
    bool lr_double) {
  using op_t = at::opmath_type<T>;
  const int t = meta.block_tensor[blockIdx.x];
  const int64_t chunk = meta.block_chunk[blockIdx.x];
  const int64_t start = chunk * kChunk;
  const int64_t left = meta.numel[t] - start;
  const int len = static_cast<int>(left < kChunk ? left : kChunk);
  T* p = static_cast<T*>(meta.p[t]) + start;
  if (meta.g[t] == nullptr) {
    for (int i = threadIdx.x; i < len; i += kThreads) clamp<T>(p[i], s);
    return;
  }
  if (lr != nullptr) {  // as Scalar(-lr).to<opmath_t>() / .to<T>() on the host
    const double v = lr_double ? *static_cast<const double*>(lr) : *static_cast<const float*>(lr);
    s.neg_lr = static_cast<op_t>(-v);
    s.neg_lr_alpha = rnd<T>(static_cast<op_t>(-v));
  }
  if (chunk == 0 && threadIdx.x == 0 && meta.step[t] != nullptr) {
    if (meta.flags[t] & kStepDouble) {
      *static_cast<double*>(meta.step[t]) += 1.0;
    } else {
      *static_cast<float*>(meta.step[t]) += 1.0f;
    }
  }
  const T* g = static_cast<const T*>(meta.g[t]) + start;
  T* sq = static_cast<T*>(meta.sq[t]) + start;
  T* ga = kCentered ? static_cast<T*>(meta.ga[t]) + start : nullptr;
  T* buf = kMomentum ? static_cast<T*>(meta.buf[t]) + start : nullptr;
  const bool aligned = meta.flags[t] & kAligned;
  for (int i0 = threadIdx.x * kILP; i0 < len; i0 += kThreads * kILP) {
    if (aligned && i0 + kILP <= len) {  // 16-byte loads (8 for 16-bit, 2 x 16 for double)
      Pack<T> vp = *reinterpret_cast<const Pack<T>*>(p + i0);
      const Pack<T> vg = *reinterpret_cast<const Pack<T>*>(g + i0);
      Pack<T> vs = *reinterpret_cast<const Pack<T>*>(sq + i0);
      Pack<T> va, vb;
      if constexpr (kCentered) va = *reinterpret_cast<const Pack<T>*>(ga + i0);
      if constexpr (kMomentum) vb = *reinterpret_cast<const Pack<T>*>(buf + i0);
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        step_one<T, kCentered, kMomentum>(vp.v[k], vg.v[k], vs.v[k], va.v[k], vb.v[k], s);
      }
      *reinterpret_cast<Pack<T>*>(p + i0) = vp;
      *reinterpret_cast<Pack<T>*>(sq + i0) = vs;
      if constexpr (kCentered) *reinterpret_cast<Pack<T>*>(ga + i0) = va;
      if constexpr (kMomentum) *reinterpret_cast<Pack<T>*>(buf + i0) = vb;
    } else {
      for (int i = i0; i < i0 + kILP && i < len; ++i) {  // in registers, then stored
        T vp = p[i], vs = sq[i], va{}, vb{};
        if constexpr (kCentered) va = ga[i];
        if constexpr (kMomentum) vb = buf[i];
        step_one<T, kCentered, kMomentum>(vp, g[i], vs, va, vb, s);
        p[i] = vp;
        sq[i] = vs;
        if constexpr (kCentered) ga[i] = va;
        if constexpr (kMomentum) buf[i] = vb;
      }
    }
  }
}

struct Entry {
  void *p, *sq, *ga, *buf, *step;
  const void* g;
  int64_t numel;
  uint8_t flags;
};

bool aligned_to(const void* ptr, size_t bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// Launches the kernel over `entries` (one dtype), as many times as the argument space needs.
template <typename T, bool kCentered, bool kMomentum>
void launch(const std::vector<Entry>& entries, const Scalars<at::opmath_type<T>>& s,
            const void* lr, bool lr_double, cudaStream_t stream) {
  Meta meta;
  int nt = 0, nb = 0;
  auto flush = [&] {
    if (nb > 0) {
      rmsprop_clip_kernel<T, kCentered, kMomentum><<<nb, kThreads, 0, stream>>>(meta, s, lr, lr_double);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    nt = nb = 0;
  };
  for (const Entry& e : entries) {
    const int64_t chunks = (e.numel + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (c == 0 || nt == 0) {  // the tensor's first chunk, or its next chunk in a new launch
        if (nt == kMaxTensors) flush();
        meta.p[nt] = e.p; meta.g[nt] = e.g; meta.sq[nt] = e.sq; meta.ga[nt] = e.ga;
        meta.buf[nt] = e.buf; meta.step[nt] = e.step; meta.numel[nt] = e.numel;
        meta.flags[nt] = e.flags;
        ++nt;
      }
      meta.block_tensor[nb] = static_cast<uint16_t>(nt - 1);
      meta.block_chunk[nb] = static_cast<int32_t>(c);
      if (++nb == kMaxBlocks) flush();
    }
  }
  flush();
}

template <typename T>
void launch_dtype(const std::vector<Entry>& entries, const Scalars<at::opmath_type<T>>& s,
                  const Args& a, const void* lr, bool lr_double, cudaStream_t stream) {
  if (entries.empty()) return;
  if (a.centered) {
    a.momentum > 0 ? launch<T, true, true>(entries, s, lr, lr_double, stream)
                   : launch<T, true, false>(entries, s, lr, lr_double, stream);
  } else {
    a.momentum > 0 ? launch<T, false, true>(entries, s, lr, lr_double, stream)
                   : launch<T, false, false>(entries, s, lr, lr_double, stream);
  }
}

void rmsprop_clip_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
    at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList steps,
    at::TensorList clip_only, const std::optional<at::Tensor>& lr_tensor, double lr,
    double alpha, double eps, double weight_decay, double momentum, bool centered,
    bool maximize, double lo, double hi) {
  const Args a{params, grads, square_avgs, grad_avgs, momentum_buffers, steps, clip_only,
               lr_tensor, lr, alpha, eps, weight_decay, momentum, centered, maximize, lo, hi};
  check_args(a, c10::DeviceType::CUDA);
  const at::Tensor& first = params.empty() ? clip_only[0] : params[0];
  const c10::cuda::CUDAGuard guard(first.device());
  const bool lr_on_device = lr_tensor.has_value() && lr_tensor->defined() && lr_tensor->is_cuda();
  TORCH_CHECK_TYPE(!lr_on_device || lr_tensor->scalar_type() == at::kFloat ||
      lr_tensor->scalar_type() == at::kDouble, "rmsprop_clip_: a CUDA lr_tensor must be float32 "
      "or float64, got ", lr_tensor->scalar_type());

  std::vector<Entry> by_dtype[4];  // float, double, half, bfloat16
  std::vector<size_t> by_aten;
  std::vector<at::Tensor> clamp_aten, host_steps, aten_steps;
  for (const auto i : c10::irange(params.size())) {
    const auto& p = params[i];
    const bool device_step = steps[i].is_cuda();
    if (!device_step) host_steps.push_back(steps[i]);
    if (p.numel() == 0 || !walks_flat(a, i)) {
      if (device_step) aten_steps.push_back(steps[i]);  // no block of ours owns it
      if (p.numel() > 0) by_aten.push_back(i);
      continue;
    }
    Entry e{p.data_ptr(), square_avgs[i].data_ptr(), centered ? grad_avgs[i].data_ptr() : nullptr,
            momentum > 0 ? momentum_buffers[i].data_ptr() : nullptr,
            device_step ? steps[i].data_ptr() : nullptr, grads[i].const_data_ptr(), p.numel(), 0};
    const size_t bytes = p.element_size() * kILP;
    if (aligned_to(e.p, bytes) && aligned_to(e.g, bytes) && aligned_to(e.sq, bytes) &&
        aligned_to(e.ga, bytes) && aligned_to(e.buf, bytes)) e.flags |= kAligned;
    if (steps[i].scalar_type() == at::kDouble) e.flags |= kStepDouble;
    by_dtype[dtype_slot(p.scalar_type())].push_back(e);
  }
  for (const auto& c : clip_only) {
    if (c.numel() == 0) continue;
    if (!c.is_non_overlapping_and_dense()) {
      clamp_aten.push_back(c);
      continue;
    }
    by_dtype[dtype_slot(c.scalar_type())].push_back(
        {c.data_ptr(), nullptr, nullptr, nullptr, nullptr, nullptr, c.numel(), 0});
  }
  // A captured graph replays device work only: host steps and a host read of a device lr
  // would not be replayed.
  const bool capturing =
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  TORCH_CHECK(!capturing || host_steps.empty(), "rmsprop_clip_: under CUDA graph capture the "
      "steps must be CUDA tensors (capturable=True), got ", host_steps.size(), " on the CPU");
  TORCH_CHECK(!capturing || by_aten.empty() || !lr_on_device, "rmsprop_clip_: parameters whose "
      "state is not laid out like them cannot be captured with a tensor learning rate");
  const bool lr_unread = lr_on_device && by_aten.empty();
  const double lr_host = lr_unread ? 0.0 : host_lr(a);
  const void* lr_ptr = lr_on_device ? lr_tensor->const_data_ptr() : nullptr;
  const bool lr_double = lr_on_device && lr_tensor->scalar_type() == at::kDouble;

  // Every scalar conversion (which may raise) before the first write, for every dtype present
  // (the ATen path's too). The kernels read a device learning rate themselves.
  bool need[4] = {false, false, false, false};
  for (const auto& p : params) need[dtype_slot(p.scalar_type())] = true;
  for (const auto& c : clip_only) need[dtype_slot(c.scalar_type())] = true;
  auto scalars = [&](auto tag, bool needed) {
    using T = decltype(tag);
    return needed ? make_scalars<T>(alpha, eps, weight_decay, momentum, maximize, lo, hi,
                                    lr_host, lr_unread)
                  : Scalars<at::opmath_type<T>>{};
  };
  const auto s32 = scalars(float{}, need[0]);
  const auto s64 = scalars(double{}, need[1]);
  const auto s16 = scalars(at::Half{}, need[2]);
  const auto sbf = scalars(at::BFloat16{}, need[3]);

  // Every check done: now write.
  const auto stream = c10::cuda::getCurrentCUDAStream(first.device().index()).stream();
  launch_dtype<float>(by_dtype[0], s32, a, lr_ptr, lr_double, stream);
  launch_dtype<double>(by_dtype[1], s64, a, lr_ptr, lr_double, stream);
  launch_dtype<at::Half>(by_dtype[2], s16, a, lr_ptr, lr_double, stream);
  launch_dtype<at::BFloat16>(by_dtype[3], sbf, a, lr_ptr, lr_double, stream);
  finish_with_aten(a, by_aten, clamp_aten, aten_steps, host_steps, lr_host);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgan_ext, CUDA, m) {
  m.impl("rmsprop_clip_", &rmsprop_clip_cuda);
}

}  // namespace wgan_ext::rmsprop
