// One multi-tensor driver for both CUDA kernels, in the shape of ATen's MultiTensorApply.cuh:
// tensors are cut into fixed-size chunks, one block per chunk; the tensors' addresses and the
// block -> (tensor, chunk) map travel by value in the kernel's arguments, so a launch reads no
// host-written table and a CUDA graph replays it as captured; a call that does not fit one
// launch's argument space makes several. The functor holds only the elementwise work.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <vector>

namespace wgan_ext::cuda {

constexpr int kThreads = 512;
constexpr int kILP = 4;                 // elements per thread per iteration
constexpr int64_t kChunkSize = 65536;  // elements per block

// Kernel-argument space: 32 KB from CUDA 12.1 on sm_70+ (used from CUDA 13 on, as ATen does),
// 4 KB before.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000
constexpr int kArgBytes = 32764;
constexpr int kMaxBlocks = 2560;
#else
constexpr int kArgBytes = 4096;
constexpr int kMaxBlocks = 320;
#endif

// D pointers per tensor (a parameter and its state), as many tensors as the space left holds.
template <int D>
struct Meta {
  static constexpr int kMaxTensors = (kArgBytes - 512 - 6 * kMaxBlocks) / (8 * D + 8);
  void* addresses[D][kMaxTensors];
  int64_t numel[kMaxTensors];
  uint16_t block_to_tensor[kMaxBlocks];
  int32_t block_to_chunk[kMaxBlocks];
};

template <int D, typename Functor, typename... Args>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_apply_kernel(const __grid_constant__ Meta<D> meta, Functor f, Args... args) {
  const int t = meta.block_to_tensor[blockIdx.x];
  const int64_t start = static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]) * kChunkSize;
  const int64_t left = meta.numel[t] - start;
  const int n = static_cast<int>(left < kChunkSize ? left : kChunkSize);
  f(meta, t, start, n, args...);
}

// Every element of `lists` (D lists of one dtype; list 0 decides the sizes; an undefined tensor
// passes nullptr), walked by `f` on `stream`.
template <int D, typename Functor, typename... Args>
void multi_tensor_apply(const std::array<std::vector<at::Tensor>, D>& lists, cudaStream_t stream,
                        Functor f, Args... args) {
  using M = Meta<D>;
  static_assert(sizeof(M) + 256 <= kArgBytes, "kernel arguments exceed the limit");
  M meta;
  int nt = 0, nb = 0;
  auto launch = [&] {
    if (nb > 0) {
      multi_tensor_apply_kernel<D><<<nb, kThreads, 0, stream>>>(meta, f, args...);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    nt = nb = 0;
  };
  for (size_t i = 0; i < lists[0].size(); ++i) {
    const int64_t numel = lists[0][i].numel();
    const int64_t chunks = (numel + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      if (c == 0 || nt == 0) {  // the tensor's first chunk, or its next chunk in a new launch
        if (nt == M::kMaxTensors) launch();
        for (int d = 0; d < D; ++d) {
          meta.addresses[d][nt] = lists[d].empty() ? nullptr : lists[d][i].data_ptr();
        }
        meta.numel[nt++] = numel;
      }
      meta.block_to_tensor[nb] = static_cast<uint16_t>(nt - 1);
      meta.block_to_chunk[nb] = static_cast<int32_t>(c);
      if (++nb == kMaxBlocks) launch();
    }
  }
  launch();
}

// kILP elements moved as one load/store when the pointer allows it.
template <typename T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

template <typename T>
__device__ __forceinline__ bool pack_aligned(const T* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>) == 0;
}

// Runs op(i0, count) over [0, n): packs of kILP (vector loads) where `aligned`, then one by one.
template <typename Op>
__device__ __forceinline__ void for_each_pack(int n, bool aligned, const Op& op) {
  const int packed = aligned ? n / kILP * kILP : 0;
  for (int i = threadIdx.x * kILP; i < packed; i += kThreads * kILP) op(i, kILP);
  for (int i = packed + threadIdx.x; i < n; i += kThreads) op(i, 1);
}

}  // namespace wgan_ext::cuda
