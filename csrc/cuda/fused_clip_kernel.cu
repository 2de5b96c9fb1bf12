// CUDA kernel of wgan_ext::fused_clip_.
//
// Multi-tensor apply in the manner of ATen's MultiTensorApply.cuh: the tensors of one dtype are
// cut into fixed-size chunks, one block per chunk; a block finds its memory run by a binary search
// over the running chunk counts. The metadata comes either as the kernel's argument (the op: no
// allocation, no host-to-device copy, safe to capture in a CUDA graph) or as a device table that
// FusedClipper's plan keeps (any number of runs in one launch). The functor is only the
// elementwise clamp, done as ATen's clamp_scalar CUDA kernel does it (compare in opmath_t, NaN
// passed through), so results are bit-identical to tensor.clamp_(lo, hi). No fminf/fmaxf: they
// return the non-NaN operand.
#include <torch/library.h>

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "multi_tensor.h"

namespace wgan_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVecBytes = 16;  // 128-bit loads and stores
constexpr int kUnroll = 4;     // vectors loaded before any is stored

constexpr int kArgRuns = kKernelArgBytes > 4096 ? 1500 : 190;  // 20 bytes each
struct ArgMeta {
  int64_t ptr[kArgRuns];
  int64_t len[kArgRuns];
  int32_t chunk_end[kArgRuns];
  int32_t n;
};

static_assert(sizeof(ArgMeta) + 16 <= kKernelArgBytes, "kernel arguments exceed the limit");

struct TableMeta {
  const int64_t* ptr;
  const int64_t* len;
  const int64_t* chunk_end;
  int64_t n;
};

template <typename scalar_t, typename opmath_t>
__device__ __forceinline__ scalar_t clamp_one(scalar_t x, opmath_t lo, opmath_t hi) {
  const opmath_t v = static_cast<opmath_t>(x);
  // A NaN fails both compares and is kept, as ATen's kernel keeps it.
  if (v < lo) return static_cast<scalar_t>(lo);
  if (v > hi) return static_cast<scalar_t>(hi);
  return x;
}

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Vec {
  scalar_t v[kVec];
};

template <typename scalar_t, typename Meta>
__global__ void __launch_bounds__(kThreads) clip_kernel(
    const __grid_constant__ Meta meta, at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi) {
  constexpr int64_t kChunk = kChunkBytes / static_cast<int64_t>(sizeof(scalar_t));
  constexpr int kVec = kVecBytes / sizeof(scalar_t);
  using V = Vec<scalar_t, kVec>;
  const int64_t chunk = blockIdx.x;
  int64_t a = 0, b = meta.n - 1;  // the run holding this chunk: the first with chunk_end > chunk
  while (a < b) {
    const int64_t m = (a + b) / 2;
    if (meta.chunk_end[m] > chunk) {
      b = m;
    } else {
      a = m + 1;
    }
  }
  const int64_t start = (chunk - (a == 0 ? 0 : meta.chunk_end[a - 1])) * kChunk;
  const int64_t rest = meta.len[a] - start;
  const int len = static_cast<int>(rest < kChunk ? rest : kChunk);
  scalar_t* p = reinterpret_cast<scalar_t*>(meta.ptr[a]) + start;

  int done = 0;
  if (reinterpret_cast<uintptr_t>(p) % kVecBytes == 0) {
    V* pv = reinterpret_cast<V*>(p);
    const int n_vec = len / kVec;
    for (int base = threadIdx.x; base < n_vec; base += kThreads * kUnroll) {
      V r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kThreads;
        if (i < n_vec) r[u] = pv[i];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * kThreads;
        if (i < n_vec) {
#pragma unroll
          for (int k = 0; k < kVec; ++k) r[u].v[k] = clamp_one(r[u].v[k], lo, hi);
          pv[i] = r[u];
        }
      }
    }
    done = n_vec * kVec;
  }
  // Misaligned tensors (a storage offset) and each chunk's tail go element by element.
  for (int i = done + threadIdx.x; i < len; i += kThreads) {
    p[i] = clamp_one(p[i], lo, hi);
  }
}

template <typename scalar_t, typename Meta>
void launch(const Meta& meta, int64_t n_chunks, double lo, double hi, cudaStream_t stream) {
  // Bounds converted as ATen's clamp_scalar_kernel_impl converts them; check_all made sure they
  // fit the dtype, so this cannot throw.
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t l = c10::Scalar(lo).to<opmath_t>();
  const opmath_t h = c10::Scalar(hi).to<opmath_t>();
  clip_kernel<scalar_t, Meta><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(meta, l, h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fused_clip_cuda(at::TensorList tensors, double lo, double hi) {
  check_all(tensors, lo, hi, "tensors");
  check_one_device(tensors);
  if (tensors.empty()) return;
  BorrowedTensors unique;
  unique_tensors(tensors, unique);
  const c10::cuda::CUDAGuard guard(unique[0].device());
  clip_with_args_(unique, lo, hi, c10::cuda::getCurrentCUDAStream(unique[0].device().index()).stream());
}

// Clamps dense, non-empty tensors of one dtype, checked, on the current device: the metadata in
// kernel arguments, one launch per 1,500 runs (190 before CUDA 13). Safe to capture in a graph.
void launch_with_args(at::ScalarType dtype, at::TensorList tensors, double lo, double hi,
                      cudaStream_t stream) {
  const Runs runs = make_runs(tensors);
  const int64_t per_chunk = chunk_elems(dtype);
  ArgMeta meta;
  meta.n = 0;
  int64_t chunks = 0;
  auto flush = [&] {
    WGAN_EXT_DISPATCH(dtype, "fused_clip_", [&] { launch<scalar_t>(meta, chunks, lo, hi, stream); });
    meta.n = 0;
    chunks = 0;
  };
  for (size_t r = 0; r < runs.ptr.size(); ++r) {
    if (meta.n == kArgRuns) flush();
    chunks += chunks_of(runs.len[r], per_chunk);
    meta.ptr[meta.n] = runs.ptr[r];
    meta.len[meta.n] = runs.len[r];
    meta.chunk_end[meta.n] = static_cast<int32_t>(chunks);
    ++meta.n;
  }
  if (meta.n > 0) flush();
}

}  // namespace

void clip_with_args_(at::TensorList unique, double lo, double hi, cudaStream_t stream) {
  DtypeGroups groups;
  group_by_dtype(unique, groups);
  for (const auto& [dtype, group] : groups.dense) launch_with_args(dtype, *group, lo, hi, stream);
  clamp_with_aten_(groups.strided, lo, hi);  // rare: a slice that is not one dense block
  bump_versions(unique);
}

void launch_with_table(at::ScalarType dtype, const int64_t* table, int64_t n_runs, int64_t n_chunks,
                       double lo, double hi, cudaStream_t stream) {
  const TableMeta meta{table, table + n_runs, table + 2 * n_runs, n_runs};
  WGAN_EXT_DISPATCH(dtype, "fused_clip_", [&] { launch<scalar_t>(meta, n_chunks, lo, hi, stream); });
}

TORCH_LIBRARY_IMPL(wgan_ext, CUDA, m) {
  m.impl("fused_clip_", &fused_clip_cuda);
}

}  // namespace cuda
}  // namespace wgan_ext
