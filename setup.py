"""Build script for wgan-ext's compiled kernels.

Two extension modules, so that a CPU-only machine never has to load CUDA libraries:

* ``wgan_ext._C``       -- the op schemas (``TORCH_LIBRARY``) and the CPU kernels. Always built
  (when torch is importable at build time).
* ``wgan_ext._C_cuda``  -- the CUDA kernels. Built where a GPU is visible and a CUDA toolkit with
  ``nvcc`` is found, or when asked for. Elsewhere it is left out, and a GPU user who installs
  later gets it compiled on first use.

Environment variables:

* ``WGAN_EXT_CUDA=1`` (or torchvision's ``FORCE_CUDA=1``)  build the CUDA extension even without
  a visible GPU, and fail if it cannot be built (CI does this). ``WGAN_EXT_CUDA=0`` never builds it.
* ``CUDA_HOME``              toolkit location (default ``/usr/local/cuda`` when it holds a toolkit).
* ``TORCH_CUDA_ARCH_LIST``   architectures to compile for; with no GPU visible the default is
                             ``8.0;9.0+PTX`` (``wgan_ext._ext.DEFAULT_CUDA_ARCH_LIST``).
* ``WGAN_EXT_CPU=0``         compile nothing (pure-PyTorch fallback / compile on first use).

Build without isolation so the extension is compiled against the torch you will run:
``pip install --no-build-isolation .``
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
# -g0 overrides the -g in Python's own CFLAGS: a wheel carries no debug info.
CXX_FLAGS = ["-O3", "-g0"]  # torch.utils.cpp_extension picks the -std its headers need
# at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it runs serially.
# Linking libgomp.so.1 reuses the copy torch already loaded (same soname).
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
# No math errno lets the optimizer kernel's square root vectorise (ATen is built the same way).
FP_FLAGS = [] if sys.platform == "win32" else ["-fno-math-errno"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
SOURCES = runpy.run_path(os.path.join(ROOT, "wgan_ext", "_sources.py"))  # shared with first-use builds


def _csrc(names) -> list:
    return [os.path.join("csrc", *name.split("/")) for name in names]


def _default_cuda_home() -> None:
    # torch's auto-detection takes the prefix of the first `nvcc` on PATH (e.g. /usr/local), which
    # has no lib64/libcudart and fails at link time; prefer the toolkit's own folder.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if os.path.isfile("/usr/local/cuda/lib64/libcudart.so"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _flag(name: str) -> str:
    return os.environ.get(name, "").strip().lower()


def _forced() -> bool:
    return _flag("WGAN_EXT_CUDA") in ("1", "true", "yes") or _flag("FORCE_CUDA") in ("1", "true", "yes")


def _want_cuda() -> bool:
    """Whether to build the CUDA extension; raises if it was asked for and cannot be built."""
    import torch
    from torch.utils import cpp_extension

    if _flag("WGAN_EXT_CUDA") in ("0", "false", "no"):
        return False
    forced = _forced()
    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    missing = ("torch is not a CUDA build" if torch.version.cuda is None
               else "no CUDA toolkit found (set CUDA_HOME)" if home is None
               else f"{nvcc} does not exist (a runtime-only CUDA?)" if not os.path.isfile(nvcc)
               else None)
    if forced:
        if missing:
            raise RuntimeError(f"WGAN_EXT_CUDA=1 / FORCE_CUDA=1 but the CUDA extension cannot be built: {missing}")
        return True
    if missing or not torch.cuda.is_available():
        print("wgan-ext: not building the CUDA kernel ("
              + (missing or "no GPU visible; WGAN_EXT_CUDA=1 builds it anyway") + ")", file=sys.stderr)
        return False
    return True


def _extensions() -> tuple[list, dict]:
    if _flag("WGAN_EXT_CPU") in ("0", "false", "no"):
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
            sources=_csrc(SOURCES["CPU"]),
            extra_compile_args={"cxx": CXX_FLAGS + OPENMP_FLAGS + FP_FLAGS},
            extra_link_args=OPENMP_FLAGS,
        )
    ]
    if _want_cuda():
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to detect: compile for Ampere and Hopper, plus PTX for newer parts.
            os.environ["TORCH_CUDA_ARCH_LIST"] = SOURCES["DEFAULT_CUDA_ARCH_LIST"]
        exts.append(
            cpp_extension.CUDAExtension(
                name="wgan_ext._C_cuda",
                sources=_csrc(SOURCES["CUDA"]),
                extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
                # A broken toolkit must not cost a user the install: unless it was asked for (CI
                # asks), a failed CUDA build is a warning and the kernel compiles on first use.
                optional=not _forced(),
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


if __name__ == "__main__":  # pip's build backend runs this file as __main__ too; tests import it
    ext_modules, cmdclass = _extensions()
    cmdclass["build_py"] = BuildPyWithSources
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
