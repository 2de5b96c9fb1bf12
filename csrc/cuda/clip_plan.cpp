// The Python module of the CUDA library (`wgan_ext._C_cuda` when built by pip, `wgan_ext_C_cuda`
// when built on first use). Loading it registers the op's CUDA kernel; the module adds
// FusedClipper's CUDA path:
//
//   plan = new_plan()                          an empty device-resident table
//   clip_with_plan_(plan, tensors, lo, hi)     -> True, or False with nothing written
//
// A plan keeps, per dtype, the memory runs of a FusedClipper's CUDA tensors in device memory,
// built on first use and rebuilt only when a call's check sees that memory moved: an eager call
// is then the checks plus one launch per dtype, with no allocation and no host-to-device copy.
// Under CUDA graph capture the metadata goes in kernel arguments instead (a graph must not read
// memory that a later call may free). The plan holds no tensor: the FusedClipper passes its own
// tuple each call (so torch.utils.swap_tensors still works on its parameters), and each call
// checks every tensor against what the table was built from before launching. Calls hold the
// GIL throughout and run no Python code, so Python threads take turns and the borrowed tensors
// stay alive.
#include <Python.h>

#include "../python_module.h"

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "multi_tensor.h"

namespace wgan_ext {
namespace cuda {
namespace {

struct Plan {
  struct Table {
    at::ScalarType dtype;
    at::Tensor runs;  // on the device: int64 [ptr x n_runs, len x n_runs, chunk_end x n_runs]
    int64_t n_runs, n_chunks;
  };
  // What the tables were built from, per tensor. `impl` is compared, never dereferenced.
  struct Memory {
    const void* impl;
    const void* data;
    int64_t numel;
    at::ScalarType dtype;
    bool dense;
    bool operator==(const Memory& o) const {
      return impl == o.impl && data == o.data && numel == o.numel && dtype == o.dtype &&
          dense == o.dense;
    }
  };
  static Memory memory_of(const at::Tensor& t) {
    return {t.unsafeGetTensorImpl(), t.numel() ? t.mutable_data_ptr() : nullptr, t.numel(),
            t.scalar_type(), t.is_non_overlapping_and_dense()};
  }

  std::vector<Memory> memory;
  std::vector<Table> tables;
  std::optional<c10::cuda::CUDAStream> stream;  // where the tables were uploaded

  bool fresh(at::TensorList tensors) const {
    if (memory.size() != tensors.size()) return false;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!(memory_of(tensors[i]) == memory[i])) return false;
    }
    return true;
  }

  void rebuild(at::TensorList tensors, const c10::cuda::CUDAStream& current) {
    DtypeGroups groups;
    group_by_dtype(tensors, groups);
    std::vector<Table> built;
    for (const auto& [dtype, group] : groups.dense) {
      const Runs runs = make_runs(*group);
      const int64_t n = static_cast<int64_t>(runs.ptr.size());
      const int64_t per_chunk = chunk_elems(dtype);
      at::Tensor host = at::empty({3 * n}, at::kLong);
      int64_t* h = host.data_ptr<int64_t>();
      int64_t chunks = 0;
      for (int64_t r = 0; r < n; ++r) {
        chunks += chunks_of(runs.len[r], per_chunk);
        h[r] = runs.ptr[r];
        h[n + r] = runs.len[r];
        h[2 * n + r] = chunks;
      }
      // A blocking copy: rebuilds are rare, and the table is complete before any stream reads it.
      built.push_back({dtype, host.to(tensors[0].device()), n, chunks});
    }
    std::vector<Memory> now;
    now.reserve(tensors.size());
    for (const auto& t : tensors) now.push_back(memory_of(t));
    tables = std::move(built);
    memory = std::move(now);
    stream = current;
  }
};

constexpr const char* kCapsule = "wgan_ext.CudaClipPlan";

PyObject* new_plan(PyObject* /*self*/, PyObject* /*args*/) {
  HANDLE_TH_ERRORS
  return PyCapsule_New(new Plan(), kCapsule, [](PyObject* capsule) {
    delete static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule));
  });
  END_HANDLE_TH_ERRORS
}

// tensors: a tuple of plain CUDA tensors. False, with nothing written, if one is not (a tensor
// moved to another device or became a subclass): the caller then takes fused_clip_'s path.
PyObject* clip_with_plan_(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *capsule, *seq;
  double lo, hi;
  if (!PyArg_ParseTuple(args, "OO!dd", &capsule, &PyTuple_Type, &seq, &lo, &hi)) return nullptr;
  auto* plan = static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule));
  if (plan == nullptr) return nullptr;
  const Py_ssize_t n = PyTuple_GET_SIZE(seq);
  BorrowedTensors tensors;  // the tuple keeps them alive; each TensorImpl once
  tensors.reserve(n);
  PointerSet seen(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* obj = PyTuple_GET_ITEM(seq, i);
    if (!THPVariable_Check(obj)) Py_RETURN_FALSE;
    const at::Tensor& t = THPVariable_Unpack(obj);
    if (seen.insert(t.unsafeGetTensorImpl())) tensors.push_back(t);
  }
  if (tensors.empty()) Py_RETURN_TRUE;
  const c10::Device device = tensors[0].device();
  for (const auto& t : tensors) {
    if (!t.is_cuda() || t.device() != device || !is_plain(t)) Py_RETURN_FALSE;
  }
  check_all(tensors, lo, hi, "critic");

  const c10::cuda::CUDAGuard guard(device);
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(device.index());
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    // A captured launch would read the table at every replay, also after a rebuild, a refresh()
    // or the clipper's end freed it: a capture gets the metadata as kernel arguments instead.
    clip_with_args_(tensors, lo, hi, stream);
    Py_RETURN_TRUE;
  }
  if (!plan->fresh(tensors)) plan->rebuild(tensors, stream);
  BorrowedTensors strided;
  for (const auto& t : tensors) {
    if (t.numel() > 0 && !t.is_non_overlapping_and_dense()) strided.push_back(t);
  }
  for (const auto& table : plan->tables) {
    if (stream != *plan->stream) {
      // Another stream reads the table now: keep its memory from reuse until that is done.
      c10::cuda::CUDACachingAllocator::recordStream(table.runs.storage().data_ptr(), stream);
    }
    launch_with_table(table.dtype, table.runs.const_data_ptr<int64_t>(), table.n_runs,
                      table.n_chunks, lo, hi, stream);
  }
  clamp_with_aten_(strided, lo, hi);
  bump_versions(tensors);
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"new_plan", new_plan, METH_NOARGS, "an empty device-resident plan for clip_with_plan_"},
    {"clip_with_plan_", clip_with_plan_, METH_VARARGS, "FusedClipper's CUDA path (see wgan_ext.ops)"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace cuda
}  // namespace wgan_ext

WGAN_EXT_PYTHON_MODULE("wgan-ext's compiled CUDA library", wgan_ext::cuda::methods)
