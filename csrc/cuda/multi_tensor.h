// Host side of the CUDA clamp, shared by the op (cuda/fused_clip_kernel.cu) and FusedClipper's
// device-resident plan (cuda/clip_plan.cpp): how tensors become memory runs and chunks, and the
// two launchers.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "../fused_clip.h"

namespace wgan_ext {
namespace cuda {

constexpr int64_t kChunkBytes = 128 * 1024;  // per block: enough loads in flight, few blocks

// Kernel-argument space for metadata passed by value: 32 KB from CUDA 12.1 on sm_70+; like ATen's
// MultiTensorApply.cuh, this uses it from CUDA 13 on, and 4 KB before.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000
constexpr int kKernelArgBytes = 32764;
#else
constexpr int kKernelArgBytes = 4096;
#endif

inline int64_t chunk_elems(at::ScalarType dtype) {
  return kChunkBytes / static_cast<int64_t>(c10::elementSize(dtype));
}

inline int64_t chunks_of(int64_t len, int64_t per_chunk) {
  return (len + per_chunk - 1) / per_chunk;
}

// Runs of memory of one dtype: tensors adjacent in memory (parameters flattened into one buffer,
// e.g. by FusedClipper(flatten=True)) are one run, so a flattened critic of 800 small tensors is
// a few full chunks instead of 800 nearly empty blocks. ptr as int64 so a table can hold it.
struct Runs {
  std::vector<int64_t> ptr, len;
};

inline Runs make_runs(at::TensorList tensors) {
  Runs runs;
  for (const auto& t : tensors) {
    const int64_t p = reinterpret_cast<int64_t>(t.mutable_data_ptr());
    if (!runs.ptr.empty() && p == runs.ptr.back() + runs.len.back() * t.element_size()) {
      runs.len.back() += t.numel();
    } else {
      runs.ptr.push_back(p);
      runs.len.push_back(t.numel());
    }
  }
  return runs;
}

// Dense, non-empty tensors per dtype (in order of first appearance) and the strided rest.
struct DtypeGroups {
  std::vector<std::pair<at::ScalarType, std::unique_ptr<BorrowedTensors>>> dense;
  BorrowedTensors strided;
};

inline void group_by_dtype(at::TensorList tensors, DtypeGroups& out) {
  for (const auto& t : tensors) {
    if (t.numel() == 0) continue;
    if (!t.is_non_overlapping_and_dense()) {
      out.strided.push_back(t);
      continue;
    }
    auto it = std::find_if(out.dense.begin(), out.dense.end(),
                           [&](const auto& g) { return g.first == t.scalar_type(); });
    if (it == out.dense.end()) {
      out.dense.emplace_back(t.scalar_type(), std::make_unique<BorrowedTensors>());
      it = out.dense.end() - 1;
    }
    it->second->push_back(t);
  }
}

// Clamps checked, unique tensors on the current device and bumps their versions: the metadata in
// kernel arguments (no allocation, no table), so safe to capture in a CUDA graph.
void clip_with_args_(at::TensorList unique, double lo, double hi, cudaStream_t stream);

// Clamps what a device table describes: int64 [ptr x n_runs, len x n_runs, chunk_end x n_runs]
// (chunk_end: chunks of runs 0..r), built from checked tensors whose memory has not moved since.
void launch_with_table(at::ScalarType dtype, const int64_t* table, int64_t n_runs, int64_t n_chunks,
                       double lo, double hi, cudaStream_t stream);

}  // namespace cuda
}  // namespace wgan_ext
