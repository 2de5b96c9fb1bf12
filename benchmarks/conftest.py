"""pytest-benchmark setup for the wgan-ext benchmarks (run: ``python -m pytest benchmarks``).

Options (see benchmarks/README.md):
  --bench-devices=cpu,cuda   devices to benchmark (default: cpu, plus cuda when available)
  --bench-seconds=S          timed seconds per benchmark (default 0.4 on CPU, 0.2 on CUDA)
  --bench-threads=N          torch.set_num_threads(N) for the session (default: torch's choice)
  --bench-compile=SHAPES     shapes that get the torch.compile contender: a comma list, 'all' or
                             'none' (default dcgan64,small800; mlp3x512 under --benchmark-disable)

Timing: one call per round (pytest-benchmark pedantic, iterations=1) after a setup that restores
the critic's pristine weights outside the timing; on CUDA the timed function synchronises.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

if importlib.util.find_spec("wgan_ext") is None:  # not installed: use the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_harness import CI_COMPILE, DEFAULT_COMPILE, Runner, kernel_status  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("wgan-ext benchmarks")
    group.addoption("--bench-devices", default=None,
                    help="comma list of devices (default: cpu, plus cuda when available)")
    group.addoption("--bench-seconds", type=float, default=None,
                    help="timed seconds per benchmark (default 0.4 on cpu, 0.2 on cuda)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch.set_num_threads for the session (default: torch's own choice)")
    group.addoption("--bench-compile", default=None,
                    help=f"shapes for the torch.compile contender: comma list, 'all' or 'none' "
                         f"(default {DEFAULT_COMPILE}; {CI_COMPILE} with --benchmark-disable)")


def pytest_configure(config):
    threads = config.getoption("--bench-threads", None)
    if threads:
        torch.set_num_threads(threads)


def bench_devices(config) -> list:
    opt = config.getoption("--bench-devices")
    if opt:
        return [d.strip() for d in opt.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", bench_devices(metafunc.config))


@pytest.fixture
def dev(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device(device)


@pytest.fixture
def run(benchmark, request):
    return Runner(benchmark, request.config)


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "devices": bench_devices(config),
    }
    try:
        import wgan_ext

        info["wgan_ext"] = wgan_ext.__version__
    except ImportError as e:
        info["wgan_ext"] = f"not importable: {e}"
    info["kernels"] = {d: dict(zip(("loaded", "info"), kernel_status(d)))
                       for d in info["devices"]}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    machine_info["wgan_ext_bench"] = info
