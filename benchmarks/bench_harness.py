"""Timing harness and kernel look-ups shared by the wgan-ext benchmarks and scripts."""

from __future__ import annotations

import time

import pytest
import torch

DEFAULT_SECONDS = {"cpu": 0.4, "cuda": 0.2}
MAX_ROUNDS = {"cpu": 2000, "cuda": 1000}
DEFAULT_COMPILE = "dcgan64,small800"
CI_COMPILE = "mlp3x512"  # the quickest graph to compile: keeps the path from rotting in CI


def kernel_status(device_type: str):
    """(loaded, how-or-reason) for wgan_ext's compiled kernel on ``device_type``."""
    try:
        from wgan_ext import _ext
    except ImportError as e:
        return False, f"wgan_ext._ext not importable ({e})"
    st = _ext.status(device_type)
    return st.loaded, (st.how if st.loaded else st.reason)


def require_kernel(device_type: str) -> str:
    loaded, info = kernel_status(device_type)
    if not loaded:
        pytest.skip(f"compiled {device_type} kernel unavailable: {info}")
    return f"{device_type} kernel ({info})"


def compile_shapes(config) -> set:
    opt = config.getoption("--bench-compile")
    if opt is None:
        opt = CI_COMPILE if config.getoption("benchmark_disable") else DEFAULT_COMPILE
    if opt == "all":
        from bench_critics import SHAPES

        return set(SHAPES)
    return set() if opt == "none" else {s.strip() for s in opt.split(",")}


class Runner:
    """Times ``fn`` with pytest-benchmark, one call per round, ``setup`` untimed before each."""

    def __init__(self, benchmark, config):
        self.benchmark = benchmark
        self.config = config

    def __call__(self, fn, *, dev: torch.device, setup=None, group: str, min_rounds: int = 20,
                 **info):
        bm = self.benchmark
        bm.group = group
        bm.extra_info.update(info, device_name=device_name(dev))
        cuda = dev.type == "cuda"

        def target():
            fn()
            if cuda:
                torch.cuda.synchronize()

        setup = setup or (lambda: None)
        if bm.disabled:  # CI: run once so the code cannot rot
            bm.pedantic(target, setup=setup, rounds=1, iterations=1)
            return
        est = float("inf")
        for _ in range(3):  # calibration; also compiles / warms caches
            setup()
            t0 = time.perf_counter()
            target()
            est = min(est, time.perf_counter() - t0)
        seconds = self.config.getoption("--bench-seconds") or DEFAULT_SECONDS[dev.type]
        rounds = int(max(min_rounds, min(MAX_ROUNDS[dev.type], seconds / max(est, 1e-7))))
        bm.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)

    def device_time(self, fn, *, key: str = "device_us", iters: int = 20) -> None:
        """CUDA only: back-to-back per-call time from CUDA events, into extra_info[key].

        Measures throughput without the per-round synchronise; fine for clamps since every
        kernel here writes every element whatever the values (time is independent of state).
        """
        if self.benchmark.disabled:
            return
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        self.benchmark.extra_info[key] = start.elapsed_time(end) * 1e3 / iters


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
