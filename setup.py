"""Build script for wgan-ext's compiled kernels.

Two extension modules are built, so that a CPU-only machine never has to load CUDA libraries:

* ``wgan_ext._C``       -- the op schema (``TORCH_LIBRARY``) and the CPU kernel. Always built.
* ``wgan_ext._C_cuda``  -- the CUDA kernel (``TORCH_LIBRARY_IMPL(..., CUDA, ...)``). Built when
  torch is a CUDA build and a CUDA toolkit is found, even if no GPU is visible.

Environment variables:

* ``CUDA_HOME``              toolkit location (``torch.utils.cpp_extension`` auto-detection may pick
                             the wrong prefix; set it explicitly, e.g. ``/usr/local/cuda``).
* ``TORCH_CUDA_ARCH_LIST``   architectures to compile for. With no GPU visible we default to
                             ``8.0;9.0+PTX`` instead of letting torch guess.
* ``WGAN_EXT_CUDA=0|1``      ``0`` skips the CUDA extension; ``1`` makes a missing toolkit an error.
* ``WGAN_EXT_CPU=0``         skip compiling altogether (pure-PyTorch fallback / JIT on first use).

Build without isolation so the extension is compiled against the torch you will run:
``pip install --no-build-isolation .``
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CXX_FLAGS = ["-O3"]  # torch.utils.cpp_extension picks the -std its headers need
# at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it runs serially.
# Linking libgomp.so.1 reuses the copy torch already loaded (same soname).
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
# rmsprop_clip_'s CPU kernel rounds as ATen does only if no a*b+c is fused behind its back; no
# math errno lets sqrt vectorise (ATen is built the same way).
FP_FLAGS = [] if sys.platform == "win32" else ["-ffp-contract=off", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _rel(*parts: str) -> str:
    return os.path.join(*parts)


def _default_cuda_home() -> None:
    # torch's auto-detection takes the prefix of the first `nvcc` on PATH (e.g. /usr/local), which
    # has no lib64/libcudart and fails at link time; prefer the toolkit's own folder.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if os.path.isfile("/usr/local/cuda/lib64/libcudart.so"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _want_cuda() -> bool:
    import torch
    from torch.utils import cpp_extension

    flag = os.environ.get("WGAN_EXT_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag in ("1", "true", "yes") and not available:
        raise RuntimeError(
            "WGAN_EXT_CUDA=1 but the CUDA extension cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}"
        )
    return available


def _extensions() -> tuple[list, dict]:
    if os.environ.get("WGAN_EXT_CPU", "1").lower() in ("0", "false", "no"):
        return [], {}
    _default_cuda_home()
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        print("wgan-ext: torch is not importable at build time; no kernels are prebuilt "
              "(they compile on first use).", file=sys.stderr)
        return [], {}

    exts = [
        cpp_extension.CppExtension(
            name="wgan_ext._C",
            sources=[_rel("csrc", "fused_clip.cpp"), _rel("csrc", "cpu", "fused_clip_kernel.cpp"),
                     _rel("csrc", "python_module.cpp"), _rel("csrc", "rmsprop_clip.cpp"),
                     _rel("csrc", "cpu", "rmsprop_clip_kernel.cpp")],
            extra_compile_args={"cxx": CXX_FLAGS + OPENMP_FLAGS + FP_FLAGS},
            extra_link_args=OPENMP_FLAGS,
        )
    ]
    if _want_cuda():
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to detect: compile for Ampere and Hopper, plus PTX for newer parts.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        exts.append(
            cpp_extension.CUDAExtension(
                name="wgan_ext._C_cuda",
                sources=[_rel("csrc", "cuda", "fused_clip_kernel.cu"),
                         _rel("csrc", "cuda", "rmsprop_clip_kernel.cu")],
                extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
                # A broken toolkit must not cost a CPU user the install: unless WGAN_EXT_CUDA=1
                # asks for it (CI does), a failed CUDA build is a warning and JIT takes over.
                optional=os.environ.get("WGAN_EXT_CUDA", "auto").lower() not in ("1", "true", "yes"),
            )
        )
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package, so an install without a prebuilt kernel (or with one built
    for another torch) can still compile on first use (wgan_ext/_ext.py looks in wgan_ext/csrc)."""

    def run(self) -> None:
        super().run()
        import shutil

        src = os.path.join(ROOT, "csrc")
        dst = os.path.join(self.build_lib, "wgan_ext", "csrc")
        if os.path.isdir(src) and not self.editable_mode:
            shutil.copytree(src, dst, dirs_exist_ok=True)


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
