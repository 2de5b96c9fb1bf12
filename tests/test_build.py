"""How the kernels get built: setup.py's choice of extensions, and the first-use (JIT) build.

The compilers are replaced by fakes in most tests here; one test compiles the CPU library on first
use for real, and `bash .ci/run` compiles both libraries and a wheel with a CUDA_HOME that holds
no nvcc.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
import torch

from wgan_ext import _ext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_py(monkeypatch):
    """setup.py's functions, without running setup()."""
    for name in ("WGAN_EXT_CUDA", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(name, raising=False)
    return runpy.run_path(str(ROOT / "setup.py"), run_name="setup")


def _toolkit(tmp_path: Path, with_nvcc: bool) -> str:
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    if with_nvcc:
        (home / "bin" / "nvcc").write_text("#!/bin/sh\n")
    return str(home)


def test_every_kernel_source_is_built_and_exists():
    # setup.py and the first-use build compile wgan_ext/_sources.py's lists: no file left out.
    from wgan_ext import _sources

    listed = {*_sources.CPU, *_sources.CUDA}
    on_disk = {str(p.relative_to(ROOT / "csrc")) for ext in ("cpp", "cu") for p in (ROOT / "csrc").rglob(f"*.{ext}")}
    assert listed == on_disk


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_cuda_home_without_nvcc_is_skipped_unless_asked_for(setup_py, monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", _toolkit(tmp_path, with_nvcc=False))
    assert setup_py["_want_cuda"]() is False
    assert "does not exist (a runtime-only CUDA?)" in capsys.readouterr().err
    for flag in ("WGAN_EXT_CUDA", "FORCE_CUDA"):
        monkeypatch.setenv(flag, "1")
        with pytest.raises(RuntimeError, match="cannot be built.*nvcc does not exist"):
            setup_py["_want_cuda"]()
        monkeypatch.delenv(flag)


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of torch")
def test_cuda_extension_is_built_where_a_gpu_is_visible_or_when_asked(setup_py, monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", _toolkit(tmp_path, with_nvcc=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert setup_py["_want_cuda"]() is False
    assert "no GPU visible; WGAN_EXT_CUDA=1 builds it anyway" in capsys.readouterr().err
    monkeypatch.setenv("FORCE_CUDA", "1")
    assert setup_py["_want_cuda"]() is True
    monkeypatch.delenv("FORCE_CUDA")
    monkeypatch.setenv("WGAN_EXT_CUDA", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert setup_py["_want_cuda"]() is False
    monkeypatch.delenv("WGAN_EXT_CUDA")
    assert setup_py["_want_cuda"]() is True


def _fake_load(calls: list, fail: bool = False):
    def load(**kwargs):
        calls.append((kwargs, os.environ.get("TORCH_CUDA_ARCH_LIST")))
        if fail:
            raise RuntimeError("Error building extension 'wgan_ext_C'")
        return "built"
    return load


def test_first_use_build_says_what_where_and_how_to_avoid_it(monkeypatch, capsys, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls: list = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load(calls))
    assert _ext._jit("wgan_ext_cpu", [], cuda=False) == "jit"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "compiling the CPU kernels of wgan-ext on first use" in err[0]
    assert "cached in" in err[0] and "WGAN_EXT_JIT=0" in err[0] and "--no-build-isolation" in err[0]
    assert err[1] == "wgan-ext: compiled the CPU kernels of wgan-ext."
    monkeypatch.setattr(cpp_extension, "load", _fake_load(calls, fail=True))
    with pytest.raises(RuntimeError):
        _ext._jit("wgan_ext_cpu", [], cuda=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert "compiling the CPU kernels of wgan-ext failed (RuntimeError)" in err[-1]


def test_a_cached_first_use_build_loads_silently(monkeypatch, capsys, tmp_path):
    # A later process finds the library by its hashed name and loads it without compiling or
    # printing; a change of source is another name, so a stale build is never loaded.
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    src = tmp_path / "k.cpp"
    src.write_text("// one")
    calls: list = []
    loaded: list = []

    def fake_build(**kwargs):
        calls.append(kwargs["name"])
        built = tmp_path / kwargs["name"] / f"{kwargs['name']}.so"
        built.parent.mkdir(exist_ok=True)
        built.write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_build)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    _ext._jit("wgan_ext_cpu", [src], cuda=False)
    assert len(calls) == 1 and len(capsys.readouterr().err.splitlines()) == 2
    _ext._jit("wgan_ext_cpu", [src], cuda=False)
    assert len(calls) == 1 and capsys.readouterr().err == ""
    assert loaded == [str(tmp_path / calls[0] / f"{calls[0]}.so")]
    src.write_text("// two")
    _ext._jit("wgan_ext_cpu", [src], cuda=False)
    assert len(calls) == 2 and calls[1] != calls[0]


def test_cuda_build_without_a_gpu_uses_the_default_arch_list(monkeypatch, capsys):
    # torch's own detection asks the GPU and fails with an IndexError when there is none.
    from torch.utils import cpp_extension

    calls: list = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load(calls))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # recorded, so the value _jit sets is undone
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    _ext._jit("wgan_ext_cuda", [], cuda=True)
    assert calls[-1][1] == _ext.DEFAULT_CUDA_ARCH_LIST
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")  # a user's choice wins
    _ext._jit("wgan_ext_cuda", [], cuda=True)
    assert calls[-1][1] == "9.0"


def test_no_gpu_no_cuda_jit_build(monkeypatch, tmp_path):
    # Without a GPU the CUDA kernel is not compiled on first use (minutes for nothing to run).
    from torch.utils import cpp_extension

    _ext.status("cpu")  # the CUDA library needs the CPU one, loaded for real
    monkeypatch.setattr(_ext, "_status", dict(_ext._status))  # this test's loads stay here
    calls: list = []
    monkeypatch.setattr(cpp_extension, "load", _fake_load(calls))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", _toolkit(tmp_path, with_nvcc=True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    monkeypatch.setattr(_ext.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    monkeypatch.delenv("WGAN_EXT_CUDA", raising=False)
    st = _ext._load("cuda")
    assert not st.loaded and "no CUDA device visible, so not compiled" in st.reason
    assert calls == []
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", _toolkit(tmp_path / "other", with_nvcc=False))
    monkeypatch.setenv("WGAN_EXT_CUDA", "1")
    st = _ext._load("cuda")
    assert "no nvcc in CUDA_HOME" in st.reason and calls == []


@pytest.mark.slow
def test_a_real_first_use_build_of_the_cpu_library(tmp_path):
    # Without the pip-built wgan_ext._C, the CPU library compiles on first use (about a minute)
    # and says so on stderr; a second process loads the cached build and prints nothing.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['wgan_ext._C'] = None\n"
        "import torch\n"
        "from wgan_ext import ClippedRMSprop, _ext, fused_clip_\n"
        "st = _ext.status('cpu')\n"
        "assert st.how == 'jit', st.reason\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))\n"
        "with torch.no_grad():\n"
        "    for p in m.parameters(): p.normal_()\n"
        "want = [p.detach().clamp(-0.01, 0.01) for p in m.parameters()]\n"
        "fused_clip_(m, 0.01, backend='cpu')\n"
        "assert all(torch.equal(p.detach(), w) for p, w in zip(m.parameters(), want))\n"
        "assert torch._C._dispatch_has_kernel_for_dispatch_key('wgan_ext::rmsprop_clip_', 'CPU')\n"
        "print('ok', st.how)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    for first in (True, False):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split() == ["ok", "jit"]
        compiled = "wgan-ext: compiling the CPU kernels of wgan-ext on first use" in proc.stderr
        assert compiled == first, proc.stderr
        assert ("wgan-ext: compiled the CPU kernels of wgan-ext." in proc.stderr) == first
