"""Timing harness and kernel look-ups shared by the wgan-ext benchmarks and scripts."""

from __future__ import annotations

import statistics
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
    """Times ``fn`` with pytest-benchmark, one call per round, ``setup`` untimed before each.

    With ``ref=(ref_fn, ref_setup)`` every round's untimed setup also times one call of
    ``ref_fn`` (after ``ref_setup``) by hand, just before the round's timed call of ``fn``; then
    ``extra_info["paired_ratio"]`` is the median over rounds of fn-time / ref-time. Both calls of
    a pair see the same machine load, so the ratio survives the drift of a shared machine that
    unpaired benchmarks, run seconds apart, do not.
    """

    def __init__(self, benchmark, config):
        self.benchmark = benchmark
        self.config = config

    def __call__(self, fn, *, dev: torch.device, setup=None, group: str, min_rounds: int = 20,
                 ref=None, **info):
        bm = self.benchmark
        bm.group = group
        bm.extra_info.update(info, device_name=device_name(dev))
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def target():
            fn()
            sync()

        ref_times: list = []

        def round_setup():
            if ref is not None:
                ref_fn, ref_setup = ref
                ref_setup()
                t0 = time.perf_counter()
                ref_fn()
                sync()
                ref_times.append(time.perf_counter() - t0)
            if setup is not None:
                setup()

        if bm.disabled:  # CI: run once so the code cannot rot
            bm.pedantic(target, setup=round_setup, rounds=1, iterations=1)
            return
        est = float("inf")
        for _ in range(3):  # calibration; also compiles / warms caches
            round_setup()
            t0 = time.perf_counter()
            target()
            est = min(est, time.perf_counter() - t0)
        seconds = self.config.getoption("--bench-seconds") or DEFAULT_SECONDS[dev.type]
        rounds = int(max(min_rounds, min(MAX_ROUNDS[dev.type], seconds / max(est, 1e-7))))
        ref_times.clear()
        bm.pedantic(target, setup=round_setup, rounds=rounds, iterations=1, warmup_rounds=1)
        if ref is not None:
            own = self.round_times()
            pairs = ref_times[-len(own):]  # the warmup round's reference comes first
            bm.extra_info.update(
                paired_ratio=statistics.median(a / b for a, b in zip(own, pairs)),
                paired_ref_min_us=min(pairs) * 1e6,
            )

    def round_times(self) -> list:
        """Seconds of each timed round of the last run (empty under --benchmark-disable)."""
        stats = self.benchmark.stats
        return list(stats.stats.data) if stats else []

    def device_time(self, fn, *, key: str = "device_us", iters: int = 20) -> None:
        """CUDA only: back-to-back per-call time from CUDA events, into extra_info[key].

        Measures throughput without the per-round synchronise; fine for clamps since every
        kernel here writes every element whatever the values (time is independent of state).
        """
        if self.benchmark.disabled:
            return
        self.benchmark.extra_info[key] = cuda_ms_per_call(fn, iters) * 1e3


def cuda_ms_per_call(fn, iters: int) -> float:
    """Milliseconds per call of ``fn`` on the current CUDA stream: one warm-up call, then ``iters``
    back-to-back calls between two CUDA events."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
