"""Loads the compiled kernels of ``wgan_ext::fused_clip_`` and ``wgan_ext::rmsprop_clip_``.

Order for each backend (``"cpu"``: the op schemas and CPU kernels; ``"cuda"``: the CUDA kernels):

1. the extension built by ``pip install`` (``wgan_ext._C`` / ``wgan_ext._C_cuda``);
2. a build on first use of the shipped sources with ``torch.utils.cpp_extension.load`` (ninja),
   cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) in a folder named
   after a hash of the sources, flags and torch version: a later process loads it without
   compiling, and says nothing;
3. nothing: the caller uses the pure-PyTorch fallback, and :func:`available` warns once why.

Step 2 prints one line to stderr when it starts compiling (what, where, how to avoid it) and one
when it is done or has failed; the CUDA kernels are compiled only where a GPU is visible (or with
``WGAN_EXT_CUDA=1`` / ``FORCE_CUDA=1``). ``WGAN_EXT_JIT=0`` disables step 2;
``WGAN_EXT_VERBOSE_BUILD=1`` shows the compiler; ``TORCH_CUDA_ARCH_LIST`` picks the CUDA
architectures (default :data:`DEFAULT_CUDA_ARCH_LIST` when no GPU is visible to detect).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import _sources

__all__ = ["available", "is_loaded", "require", "status", "source_dir", "BackendStatus",
           "DEFAULT_CUDA_ARCH_LIST"]

DEFAULT_CUDA_ARCH_LIST = _sources.DEFAULT_CUDA_ARCH_LIST  # setup.py uses the same list
OPS = ("fused_clip_", "rmsprop_clip_")
_PKG_DIR = Path(__file__).resolve().parent


@dataclass
class BackendStatus:
    """What loading a backend gave: ``how`` is 'prebuilt', 'jit' or None (then ``reason``)."""

    name: str
    how: Optional[str] = None
    reason: str = ""
    attempts: list = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return self.how is not None


# Re-entrant: loading "cuda" loads "cpu" first (the schemas live in the CPU library).
_lock = threading.RLock()
_status: dict[str, BackendStatus] = {}
_warned: set[str] = set()


def source_dir() -> Optional[Path]:
    """The ``csrc`` folder: inside the installed package, or beside it in a source checkout."""
    for candidate in (_PKG_DIR / "csrc", _PKG_DIR.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    return None


def _has_kernels(key: str) -> bool:
    """Whether both ops are defined with a kernel for dispatch key ``key`` ('CPU' or 'CUDA')."""
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"wgan_ext::{op}", key)
                   for op in OPS)
    except RuntimeError:  # an op not defined at all
        return False


def _register_fake() -> None:
    # The ops mutate their inputs and return nothing: under FakeTensor / torch.compile tracing
    # (and on meta tensors) there is nothing to compute, but a list spanning devices fails as it
    # does at run time.
    if getattr(_register_fake, "done", False):
        return

    @torch.library.register_fake("wgan_ext::fused_clip_")
    def _fused_clip_fake(tensors, lo, hi):  # noqa: ARG001
        for i, t in enumerate(tensors):
            if t.device != tensors[0].device:
                raise ValueError(f"fused_clip_: all tensors must be on one device; tensors[0] is on "
                                 f"{tensors[0].device}, tensors[{i}] on {t.device}")

    @torch.library.register_fake("wgan_ext::rmsprop_clip_")
    def _rmsprop_clip_fake(*args):  # noqa: ARG001
        return None

    _register_fake.done = True


def _default_cuda_home() -> None:
    # As in setup.py: torch guesses CUDA_HOME from the first `nvcc` on PATH (e.g. /usr/local),
    # which has no lib64/libcudart; prefer the toolkit's own folder. Must run before
    # torch.utils.cpp_extension is first imported, since it reads CUDA_HOME at import.
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.isfile(
        "/usr/local/cuda/lib64/libcudart.so"
    ):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _build_kwargs(sources: list, cuda: bool) -> dict:
    # -fopenmp: at::parallel_for is inlined from ATen's OpenMP header (see setup.py).
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and not cuda else []
    flags = ["-O3"] + ([] if cuda or sys.platform == "win32" else ["-fno-math-errno"])
    kwargs = dict(sources=[str(s) for s in sources], extra_cflags=flags + openmp,
                  extra_ldflags=openmp, is_python_module=False,
                  verbose=os.environ.get("WGAN_EXT_VERBOSE_BUILD") == "1")
    if cuda:
        kwargs["extra_cuda_cflags"] = ["-O3", "--expt-relaxed-constexpr"]
    return kwargs


def _jit(name: str, sources: list, cuda: bool) -> str:
    """Build (or find built) the library of ``sources``; returns 'jit'. Prints only when compiling."""
    _default_cuda_home()
    from torch.utils import cpp_extension

    if cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch would ask the (absent) GPU for its architecture and fail with an IndexError.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    kwargs = _build_kwargs(sources, cuda)
    key = hashlib.sha256(repr((torch.__version__, sys.version_info[:2], kwargs["extra_cflags"],
                               os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda else None)).encode())
    src = source_dir()
    headers = sorted(p for ext in ("h", "cuh") for p in src.rglob(f"*.{ext}")) if src else []
    for s in [*sources, *headers]:  # a changed header is a new build too
        key.update(Path(s).read_bytes())
    name = f"{name}_{key.hexdigest()[:12]}"  # a cached build is found by name, never rebuilt
    built = Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"
    if built.is_file():
        try:
            torch.ops.load_library(str(built))
            return "jit"
        except OSError:  # a partial file from an interrupted build: build it again below
            pass
    what = f"the {'CUDA' if cuda else 'CPU'} kernels of wgan-ext"
    print(f"wgan-ext: compiling {what} on first use (about a minute; once per torch version, "
          f"cached in {built.parent}; `pip install --no-build-isolation wgan-ext` ships them "
          "prebuilt, WGAN_EXT_JIT=0 skips this) ...", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(name=name, **kwargs)
    except Exception as e:
        print(f"wgan-ext: compiling {what} failed ({type(e).__name__}); using the PyTorch "
              "fallback. `wgan-ext info` shows why.", file=sys.stderr, flush=True)
        raise
    print(f"wgan-ext: compiled {what}.", file=sys.stderr, flush=True)
    return "jit"


def _cuda_unbuildable() -> Optional[str]:
    """Why the CUDA kernels cannot be compiled on first use here, or None."""
    _default_cuda_home()
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    forced = any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes")
                 for flag in ("WGAN_EXT_CUDA", "FORCE_CUDA"))
    if home is None:
        return "no CUDA toolkit found for a JIT build (set CUDA_HOME)"
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return f"no nvcc in CUDA_HOME={home} for a JIT build"
    if not forced and not torch.cuda.is_available():
        return "no CUDA device visible, so not compiled (WGAN_EXT_CUDA=1 compiles it anyway)"
    return None


def _load(name: str) -> BackendStatus:
    st = BackendStatus(name)
    key = name.upper()
    if name == "cuda":
        if torch.version.cuda is None:
            st.reason = "this torch is not a CUDA build"
            return st
        cpu = status("cpu")  # the schemas live in the CPU library
        if not cpu.loaded:
            st.reason = f"the CPU library that defines the ops is missing ({cpu.reason})"
            return st
    module = "wgan_ext._C" if name == "cpu" else "wgan_ext._C_cuda"
    try:
        importlib.import_module(module)
        if _has_kernels(key):
            st.how = "prebuilt"
        else:
            st.attempts.append(f"{module} imported but registers no {key} kernels of {OPS}")
    except Exception as e:  # ImportError, or an OSError/undefined symbol from a stale build
        st.attempts.append(f"no prebuilt {module} ({type(e).__name__}: {e})")
    src = source_dir()
    if st.loaded:
        pass
    elif os.environ.get("WGAN_EXT_JIT", "1").lower() in ("0", "false", "no"):
        st.attempts.append("JIT build disabled by WGAN_EXT_JIT=0")
    elif src is None:
        st.attempts.append("kernel sources (csrc/) not found for a JIT build")
    elif name == "cuda" and _cuda_unbuildable():
        st.attempts.append(_cuda_unbuildable())
    else:
        names = _sources.CPU if name == "cpu" else _sources.CUDA
        try:
            st.how = _jit(f"wgan_ext_{name}", [src.joinpath(*n.split("/")) for n in names],
                          cuda=name == "cuda")
        except Exception as e:  # compiler missing, build error, ninja missing...
            st.attempts.append(f"JIT build failed ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[-1:]})")
        if st.loaded and not _has_kernels(key):
            st.how = None
            st.attempts.append(f"JIT build registered no {key} kernels")
    if st.loaded and name == "cpu":
        _register_fake()
    st.reason = "" if st.loaded else "; ".join(st.attempts)
    return st


def status(name: str) -> BackendStatus:
    """Load backend ``name`` ('cpu' or 'cuda') if not tried yet; return what happened."""
    if name not in ("cpu", "cuda"):
        raise ValueError(f"backend name must be 'cpu' or 'cuda', got {name!r}")
    st = _status.get(name)
    if st is None:
        with _lock:
            st = _status.get(name)
            if st is None:
                st = _status[name] = _load(name)
    return st


def is_loaded(name: str) -> bool:
    """True if backend ``name`` is already loaded. Never builds: safe while dynamo traces."""
    st = _status.get(name)
    return st is not None and st.loaded


def available(name: str, warn: bool = False) -> bool:
    """Load backend ``name`` if needed; with ``warn``, say once why it is unavailable."""
    st = status(name)
    if not st.loaded and warn and name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"wgan_ext: the compiled {name.upper()} kernels are unavailable ({st.reason}); using "
            "the pure-PyTorch fallback (same results, slower). `python -m wgan_ext info` shows "
            "details.", RuntimeWarning, stacklevel=4)
    return st.loaded


def require(name: str) -> None:
    """Load backend ``name`` or raise ``RuntimeError`` with the reason."""
    st = status(name)
    if not st.loaded:
        raise RuntimeError(f"wgan_ext: backend={name!r} requested but its kernel is unavailable: "
                           f"{st.reason}")
