"""Loads the compiled kernels of ``wgan_ext::fused_clip_``: prebuilt, else built on first use.

Order for each backend (``"cpu"``: schema + CPU kernel; ``"cuda"``: the CUDA kernel):

1. the extension module built by ``pip install`` (``wgan_ext._C`` / ``wgan_ext._C_cuda``);
2. a just-in-time build of the shipped sources with ``torch.utils.cpp_extension.load`` (ninja),
   cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) so it happens once
   per torch version and source change;
3. nothing: the caller uses the pure-PyTorch fallback, and :func:`available` warns once why.

Step 2 prints one line to stderr when it starts (what, where it is cached, how to avoid it) and
one when it is done or has failed; the CUDA kernel is only compiled where a GPU is visible (or
with ``WGAN_EXT_CUDA=1`` / ``FORCE_CUDA=1``). Environment: ``WGAN_EXT_JIT=0`` disables step 2;
``WGAN_EXT_VERBOSE_BUILD=1`` shows the compiler; ``TORCH_CUDA_ARCH_LIST`` picks the CUDA
architectures (default :data:`DEFAULT_CUDA_ARCH_LIST` when no GPU is visible to detect).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import _sources

__all__ = ["available", "is_loaded", "require", "status", "peek", "source_dir", "cpu_library",
           "cuda_library", "BackendStatus", "DEFAULT_CUDA_ARCH_LIST"]

DEFAULT_CUDA_ARCH_LIST = _sources.DEFAULT_CUDA_ARCH_LIST  # setup.py uses the same list

_PKG_DIR = Path(__file__).resolve().parent


@dataclass
class BackendStatus:
    """What happened when a backend was loaded: ``how`` is 'prebuilt', 'jit' or None."""

    name: str
    how: Optional[str] = None
    reason: str = ""
    attempts: list = field(default_factory=list)
    module: Any = None  # the library's Python module (csrc/python_api.cpp, csrc/cuda/clip_plan.cpp)

    @property
    def loaded(self) -> bool:
        return self.how is not None


# Re-entrant: loading "cuda" loads "cpu" first (the op's schema lives in the CPU library), and
# status() takes the lock on both levels.
_lock = threading.RLock()
_status: dict[str, BackendStatus] = {}
_warned: set[str] = set()


def source_dir() -> Optional[Path]:
    """The ``csrc`` folder: inside the installed package, or beside it in a source checkout."""
    for candidate in (_PKG_DIR / "csrc", _PKG_DIR.parent / "csrc"):
        if (candidate / "fused_clip.cpp").is_file():
            return candidate
    return None


def _has_kernel(key: str, op: str = "fused_clip_") -> bool:
    """Whether the loaded libraries define ``wgan_ext::<op>`` with a kernel for dispatch key ``key``."""
    try:
        getattr(torch.ops.wgan_ext, op)
    except (AttributeError, RuntimeError):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"wgan_ext::{op}", key)


def _register_fake() -> None:
    # The ops mutate their inputs and return nothing, so under FakeTensor / torch.compile tracing
    # (and on meta tensors) there is nothing to compute; fused_clip_ refuses what the real
    # kernels refuse about devices, so a list spanning devices fails the same way everywhere.
    if getattr(_register_fake, "done", False):
        return

    @torch.library.register_fake("wgan_ext::fused_clip_")
    def _fused_clip_fake(tensors, lo, hi):  # noqa: ARG001
        for i, t in enumerate(tensors):
            if t.device != tensors[0].device:
                raise ValueError(f"fused_clip_: all tensors must be on one device; tensors[0] is on "
                                 f"{tensors[0].device}, tensors[{i}] on {t.device}")
        return None

    if _has_kernel("CPU", "rmsprop_clip_"):  # not in a library built before the optimizer
        @torch.library.register_fake("wgan_ext::rmsprop_clip_")
        def _rmsprop_clip_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, steps,  # noqa: ARG001
                               clip_only, lr_tensor, lr, alpha, eps, weight_decay, momentum,
                               centered, maximize, lo, hi):
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


def _build_dir(name: str) -> str:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return _get_build_directory(name, verbose=False)
    except Exception:  # a private helper of torch's: only for the message
        return os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions")


def _jit(name: str, sources: list, cuda: bool) -> Any:
    _default_cuda_home()
    from torch.utils import cpp_extension

    if cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch would ask the (absent) GPU for its architecture and fail with an IndexError.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    flags = ["-O3"]  # cpp_extension adds the -std its headers need
    if not cuda and sys.platform != "win32":
        flags += ["-ffp-contract=off", "-fno-math-errno"]  # rmsprop_clip_ rounds as ATen (setup.py)
    # at::parallel_for is inlined from ATen's OpenMP header (see setup.py).
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") and not cuda else []
    kwargs = dict(
        name=name,
        sources=[str(s) for s in sources],
        extra_cflags=flags + openmp,
        extra_ldflags=openmp,
        # Both libraries are Python modules too (csrc/python_api.cpp, csrc/cuda/clip_plan.cpp).
        is_python_module=True,
        verbose=os.environ.get("WGAN_EXT_VERBOSE_BUILD") == "1",
    )
    if cuda:
        kwargs["extra_cuda_cflags"] = ["-O3", "--expt-relaxed-constexpr"]
    what = f"the {'CUDA' if cuda else 'CPU'} kernel of fused_clip_"
    print(f"wgan-ext: compiling {what} on first use (once per torch version; cached in "
          f"{_build_dir(name)}; `pip install --no-build-isolation wgan-ext` ships it "
          "prebuilt, WGAN_EXT_JIT=0 skips this) ...", file=sys.stderr, flush=True)
    try:
        built = cpp_extension.load(**kwargs)
    except Exception as e:
        print(f"wgan-ext: compiling {what} failed ({type(e).__name__}); using the PyTorch "
              "fallback. `wgan-ext info` shows why.", file=sys.stderr, flush=True)
        raise
    print(f"wgan-ext: compiled {what}.", file=sys.stderr, flush=True)
    return built


def _load(name: str) -> BackendStatus:
    st = BackendStatus(name)
    key = "CPU" if name == "cpu" else "CUDA"
    if name == "cuda":
        if torch.version.cuda is None:
            st.reason = "this torch is not a CUDA build"
            return st
        cpu = status("cpu")  # the schema lives in the CPU library
        if not cpu.loaded:
            st.reason = f"the CPU library that defines the op is missing ({cpu.reason})"
            return st

    module = "wgan_ext._C" if name == "cpu" else "wgan_ext._C_cuda"
    try:
        imported = importlib.import_module(module)
        if _has_kernel(key):
            st.how = "prebuilt"
            st.module = imported
            if name == "cpu":
                _register_fake()
            return st
        st.attempts.append(f"{module} imported but registered no {key} kernel")
    except Exception as e:  # ImportError, or an OSError/undefined symbol from a stale build
        st.attempts.append(f"no prebuilt {module} ({type(e).__name__}: {e})")

    if os.environ.get("WGAN_EXT_JIT", "1").lower() in ("0", "false", "no"):
        st.reason = "; ".join(st.attempts + ["JIT build disabled by WGAN_EXT_JIT=0"])
        return st
    src = source_dir()
    if src is None:
        st.reason = "; ".join(st.attempts + ["kernel sources (csrc/) not found for a JIT build"])
        return st
    if name == "cuda":
        _default_cuda_home()
        from torch.utils import cpp_extension

        home = cpp_extension.CUDA_HOME
        forced = any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes")
                     for flag in ("WGAN_EXT_CUDA", "FORCE_CUDA"))
        missing = ("no CUDA toolkit found for a JIT build (set CUDA_HOME)" if home is None
                   else f"no nvcc in CUDA_HOME={home} for a JIT build"
                   if not os.path.isfile(os.path.join(home, "bin", "nvcc"))
                   else "no CUDA device visible, so not compiled (WGAN_EXT_CUDA=1 compiles it anyway)"
                   if not forced and not torch.cuda.is_available() else None)
        if missing:
            st.reason = "; ".join(st.attempts + [missing])
            return st
        names, jit_name = _sources.CUDA, "wgan_ext_C_cuda"
    else:
        names, jit_name = _sources.CPU, "wgan_ext_C"
    sources = [src.joinpath(*name.split("/")) for name in names]
    try:
        built = _jit(jit_name, sources, cuda=name == "cuda")
    except Exception as e:  # compiler missing, build error, ninja missing...
        st.attempts.append(f"JIT build failed ({type(e).__name__}: {str(e).strip().splitlines()[-1:]})")
        st.reason = "; ".join(st.attempts)
        return st
    if _has_kernel(key):
        st.how = "jit"
        st.module = built
        if name == "cpu":
            _register_fake()
    else:
        st.reason = "; ".join(st.attempts + [f"JIT build registered no {key} kernel"])
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
                st = _load(name)
                _status[name] = st
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
            f"wgan_ext: the compiled {name.upper()} kernel of fused_clip_ is unavailable "
            f"({st.reason}); using the pure-PyTorch fallback (same results, slower). "
            "`python -m wgan_ext info` shows details.",
            RuntimeWarning,
            stacklevel=4,
        )
    return st.loaded


def require(name: str) -> None:
    """Load backend ``name`` or raise ``RuntimeError`` with the reason."""
    st = status(name)
    if not st.loaded:
        raise RuntimeError(f"wgan_ext: backend={name!r} requested but its kernel is unavailable: {st.reason}")


def peek(name: str) -> Optional[BackendStatus]:
    """What loading backend ``name`` gave, or None if it was not tried yet. Never loads."""
    return _status.get(name)


def cpu_library() -> Any:
    """The CPU library's Python module (``parameters``, ``clip_``), or None if not loaded.
    Never builds: loaded by the first CPU request."""
    st = _status.get("cpu")
    return st.module if st is not None else None


def cuda_library() -> Any:
    """The CUDA library's Python module (``new_plan``, ``clip_with_plan_``), or None if not
    loaded. Never builds."""
    st = _status.get("cuda")
    return st.module if st is not None else None
