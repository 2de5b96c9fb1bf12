// CUDA kernel of wgan_ext::fused_clip_: all tensors of one dtype in ONE launch.
//
// Multi-tensor apply in the manner of NVIDIA apex: the host cuts every tensor (or run of
// tensors adjacent in memory) into fixed-size chunks and writes a table (run pointers, then one
// (start, run|length) pair per chunk)
// into a pinned buffer; one async copy moves it to the device and one launch runs a block per
// chunk. Unlike apex the table lives in device memory instead of kernel arguments, so a call
// with any number of tensors is still one launch (apex re-launches every ~100 tensors).
// The functor is only the elementwise clamp, done the way ATen's clamp_scalar CUDA kernel does
// it (compare in opmath_t = float for half/bfloat16, NaN passed through), so results are
// bit-identical to tensor.clamp_(lo, hi). No fminf/fmaxf: they return the non-NaN operand.
#include <Python.h>
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/Scalar.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "../fused_clip.h"

namespace wgan_ext {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkBytes = 128 * 1024;  // per block: enough loads in flight, few blocks
constexpr int kVecBytes = 16;                // 128-bit loads and stores
constexpr int kUnroll = 4;                   // vectors loaded before any is stored

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

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) fused_clip_kernel(
    const int64_t* __restrict__ table, int64_t n_runs,
    at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi) {
  constexpr int kVec = kVecBytes / sizeof(scalar_t);
  using V = Vec<scalar_t, kVec>;
  const int64_t* chunk = table + n_runs + 2 * static_cast<int64_t>(blockIdx.x);
  const int64_t start = chunk[0];
  const int64_t packed = chunk[1];
  const int64_t run = packed >> 32;
  const int len = static_cast<int>(packed & 0xffffffff);
  scalar_t* p = reinterpret_cast<scalar_t*>(table[run]) + start;

  int done = 0;
  if (reinterpret_cast<uintptr_t>(p) % kVecBytes == 0) {
    V* pv = reinterpret_cast<V*>(p);
    const int n_vec = len / kVec;
    const int step = kThreads * kUnroll;
    for (int base = threadIdx.x; base < n_vec; base += step) {
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
  // Misaligned tensors (a storage offset) and the tail of each tensor go element by element.
  for (int i = done + threadIdx.x; i < len; i += kThreads) {
    p[i] = clamp_one(p[i], lo, hi);
  }
}

template <typename scalar_t>
void launch_one_dtype(const std::vector<at::Tensor>& tensors, double lo_d, double hi_d) {
  using opmath_t = at::opmath_type<scalar_t>;
  // Bounds converted as ATen's clamp_scalar_kernel_impl converts them (Scalar::to<opmath_t>),
  // before anything is written, so an out-of-range bound raises with nothing modified.
  const opmath_t lo = c10::Scalar(lo_d).to<opmath_t>();
  const opmath_t hi = c10::Scalar(hi_d).to<opmath_t>();
  const int64_t chunk_elems = kChunkBytes / static_cast<int64_t>(sizeof(scalar_t));

  // Memory runs: a tensor that starts where the previous one ends (parameters flattened into
  // one buffer, e.g. by FusedClipper(flatten=True)) extends that run, so a flattened critic of
  // 800 small tensors becomes a few full chunks instead of 800 nearly empty blocks.
  std::vector<int64_t> run_ptr, run_len;
  run_ptr.reserve(tensors.size());
  run_len.reserve(tensors.size());
  for (const auto& t : tensors) {
    const int64_t ptr = reinterpret_cast<int64_t>(t.data_ptr());
    if (!run_ptr.empty() &&
        ptr == run_ptr.back() + run_len.back() * static_cast<int64_t>(sizeof(scalar_t))) {
      run_len.back() += t.numel();
    } else {
      run_ptr.push_back(ptr);
      run_len.push_back(t.numel());
    }
  }
  const int64_t n_runs = static_cast<int64_t>(run_ptr.size());
  int64_t n_chunks = 0;
  for (const int64_t len : run_len) {
    n_chunks += (len + chunk_elems - 1) / chunk_elems;
  }
  if (n_chunks == 0) {
    return;
  }
  TORCH_CHECK(n_chunks <= std::numeric_limits<int32_t>::max(),
      "fused_clip_: too many elements for one launch (", n_chunks, " chunks)");

  // Pinned, so the copy below is truly async; the caching host allocator keeps the block alive
  // until the copy that reads it has finished on the stream.
  auto host = at::empty({n_runs + 2 * n_chunks},
      at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  int64_t* c = h + n_runs;
  for (int64_t i = 0; i < n_runs; ++i) {
    h[i] = run_ptr[i];
    for (int64_t s = 0; s < run_len[i]; s += chunk_elems) {
      const int64_t len = std::min(chunk_elems, run_len[i] - s);
      *c++ = s;
      *c++ = (i << 32) | len;
    }
  }
  const auto device = tensors[0].device();
  auto table = host.to(device, /*non_blocking=*/true);

  auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  fused_clip_kernel<scalar_t><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream.stream()>>>(
      table.const_data_ptr<int64_t>(), n_runs, lo, hi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fused_clip_cuda(at::TensorList all_tensors, double lo, double hi) {
  check_fused_clip_args(all_tensors, lo, hi, c10::DeviceType::CUDA);
  if (all_tensors.empty()) {
    return;
  }
  const std::vector<at::Tensor> unique = drop_duplicates(all_tensors);
  const at::TensorList tensors = unique.empty() ? all_tensors : at::TensorList(unique);
  const c10::cuda::CUDAGuard guard(tensors[0].device());

  // One launch per dtype present (nearly always one); slices that are not one dense block go
  // to ATen's clamp_ (below autograd, so leaves that require grad are writable).
  std::vector<at::Tensor> by_dtype[4];
  std::vector<at::Tensor> strided;
  for (const auto& t : tensors) {
    if (t.numel() == 0) continue;
    if (!is_flat(t)) {
      strided.push_back(t);
      continue;
    }
    switch (t.scalar_type()) {
      case at::kFloat: by_dtype[0].push_back(t); break;
      case at::kHalf: by_dtype[1].push_back(t); break;
      case at::kBFloat16: by_dtype[2].push_back(t); break;
      default: by_dtype[3].push_back(t); break;
    }
  }
  // Bounds convert to float (all 16/32-bit dtypes) or double, so a bound that overflows raises
  // in the first launch_one_dtype, before any kernel has written.
  if (!by_dtype[0].empty()) launch_one_dtype<float>(by_dtype[0], lo, hi);
  if (!by_dtype[1].empty()) launch_one_dtype<at::Half>(by_dtype[1], lo, hi);
  if (!by_dtype[2].empty()) launch_one_dtype<at::BFloat16>(by_dtype[2], lo, hi);
  if (!by_dtype[3].empty()) launch_one_dtype<double>(by_dtype[3], lo, hi);
  if (!strided.empty()) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (auto& t : strided) t.clamp_(lo, hi);
  }
  bump_versions(tensors);
}

}  // namespace

TORCH_LIBRARY_IMPL(wgan_ext, CUDA, m) {
  m.impl("fused_clip_", &fused_clip_cuda);
}

}  // namespace wgan_ext

extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
