"""FusedClipper: what it holds, what it follows, and that calls from several threads are safe.

Values are compared with ``clamp_`` as in test_fused_clip.py (``check``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from _clip_util import HAS_CUDA, _backends, assert_bit_equal, assert_numbers_equal, check, make_values
from wgan_ext import FusedClipper


def _scramble(module: torch.nn.Module, scale: float = 10.0) -> list:
    """Fill every parameter with out-of-range values; return copies to compare against."""
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(make_values(p.numel(), p.dtype, str(p.device), 100 + i).view_as(p) * scale)
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("device,backend", _backends())
def test_matches_clamp_and_refreshes(device, backend):
    critic = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 1)).to(device)
    clip = FusedClipper(critic, (-0.02, 0.03), backend=backend)
    assert len(clip.tensors) == 4
    before = _scramble(critic)
    clip()
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.02, 0.03, backend)
    critic.append(torch.nn.Linear(1, 3).to(device))
    with torch.no_grad():
        critic[2].weight.fill_(5.0)
    clip()
    assert critic[2].weight.max().item() == 5.0  # not collected yet
    clip.refresh()
    clip()
    assert critic[2].weight.max().item() == pytest.approx(0.03)


@pytest.mark.parametrize("device,backend", _backends())
def test_a_one_shot_iterator_is_read_once_and_refresh_keeps_its_tensors(device, backend):
    critic = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).to(device)
    clip = FusedClipper(critic.parameters(), 0.01, backend=backend)
    clip.refresh()  # the generator is spent; the clipper must still hold every tensor
    before = _scramble(critic)
    clip()
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.01, 0.01, backend)


@pytest.mark.parametrize("device,backend", _backends())
def test_replaced_parameters_are_clipped_after_refresh(device, backend):
    # load_state_dict(assign=True) puts new Parameter objects in the critic: the clipper keeps
    # clamping the tensors it holds until refresh().
    critic = torch.nn.Linear(6, 3).to(device)
    clip = FusedClipper(critic, 0.01, backend=backend)
    old = clip.tensors
    critic.load_state_dict({k: v.clone() * 100 for k, v in critic.state_dict().items()}, assign=True)
    assert critic.weight is not old[0]
    clip()
    assert critic.weight.abs().max().item() > 0.01
    clip.refresh()
    before = [p.detach().clone() for p in critic.parameters()]
    clip()
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.01, 0.01, backend)


def test_swap_mode_to_works_and_is_followed():
    # Under swap-mode conversion, Module.to() swaps each parameter's TensorImpl
    # (torch.utils.swap_tensors), which refuses tensors that something else references in C++.
    # The clipper's references are Python ones: .to() works, and the clipper follows.
    critic = torch.nn.Linear(3, 2)
    clip = FusedClipper(critic, 0.01)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        critic.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    before = _scramble(critic)
    clip()
    assert critic.weight.dtype == torch.float64
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.01, 0.01, "cpu")


def test_follows_data_swaps_of_another_dtype():
    critic = torch.nn.Linear(6, 3)
    clip = FusedClipper(critic, 0.01, backend="cpu")
    critic.weight.data = make_values(18, torch.float64, "cpu", 21).view(3, 6)
    critic.bias.data = make_values(3, torch.float32, "cpu", 22) * 100
    before = [p.detach().clone() for p in critic.parameters()]
    clip()
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.01, 0.01, "cpu")


def _swap_new_storage(p):
    p.data = make_values(p.numel(), p.dtype, "cpu", 31).view_as(p) * 10


def _swap_strided(p):
    p.data = make_values(2 * p.numel(), p.dtype, "cpu", 32)[::2].view(p.shape) * 10


def _swap_transposed(p):
    p.data = (make_values(p.numel(), p.dtype, "cpu", 33) * 10).view(p.shape[::-1]).t()


def _swap_bigger(p):
    p.data = make_values(3 * p.numel(), p.dtype, "cpu", 34) * 10


def _resize_storage(p):
    # The storage reallocates in place: same StorageImpl, new data pointer (the old one is freed)
    p.data.untyped_storage().resize_(2 * p.untyped_storage().nbytes())
    with torch.no_grad():
        p.copy_(make_values(p.numel(), p.dtype, "cpu", 35).view_as(p) * 10)


def _set_(p):
    with torch.no_grad():
        p.set_(make_values(p.numel(), p.dtype, "cpu", 36).view_as(p) * 10)


@pytest.mark.parametrize("change", [_swap_new_storage, _swap_strided, _swap_transposed, _swap_bigger,
                                    _resize_storage, _set_])
def test_follows_storage_changes(change):
    critic = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))
    clip = FusedClipper(critic, 0.01, backend="cpu")
    clip()
    target = critic[0].weight
    change(target)
    with torch.no_grad():
        for i, p in enumerate(critic.parameters()):
            if p is not target:
                p.copy_(make_values(p.numel(), p.dtype, "cpu", 40 + i).view_as(p) * 10)
    before = [p.detach().clone() for p in critic.parameters()]
    versions = [p._version for p in critic.parameters()]
    clip()
    for p, b, v in zip(critic.parameters(), before, versions):
        check(p.detach(), b, -0.01, 0.01, "cpu")
        assert p._version == v + 1


def test_refuses_a_swapped_in_negative_view_and_modifies_nothing():
    critic = torch.nn.Linear(3, 2)
    clip = FusedClipper(critic, 0.01, backend="cpu")
    with torch.no_grad():
        critic.weight.mul_(100)
    critic.bias.data = torch.full((2,), 0.5)._neg_view()
    weight = critic.weight.detach().clone()
    with pytest.raises(TypeError, match=r"tensors\[1\] is a negative view"):
        clip()
    assert_bit_equal(critic.weight.detach(), weight)
    assert torch.equal(critic.bias.detach().resolve_neg(), torch.full((2,), -0.5))


def test_leaves_a_copy_on_write_clone_alone():
    # torch._lazy_clone shares the parameter's memory until one side writes: the clip must
    # materialize the parameter's own copy, not clamp the clone through shared memory.
    critic = torch.nn.Linear(8, 8)
    clip = FusedClipper(critic, 0.01, backend="cpu")
    clip()
    with torch.no_grad():
        critic.weight.copy_(make_values(64, torch.float32, "cpu", 50).view(8, 8) * 10)
    clone = torch._lazy_clone(critic.weight.detach())
    before = critic.weight.detach().clone()
    clip()
    assert_bit_equal(clone, before)
    assert_numbers_equal(critic.weight.detach(), before.clamp(-0.01, 0.01))


def test_bad_arguments():
    critic = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="flatten must be a bool"):
        FusedClipper(critic, 0.25, flatten="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedClipper(critic, 0.25, backend="triton")
    with pytest.raises(TypeError, match=r"tensors\[2\] has dtype torch.int64"):
        FusedClipper([critic.weight, critic.bias, torch.arange(3)], 0.25)


# ----------------------------------------------------------------------------- threads
_THREADS_SCRIPT = textwrap.dedent("""
    import sys, threading, torch, wgan_ext
    torch.manual_seed(0)
    # Over a million elements, so that the CPU clamp runs without the GIL.
    critic = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(20)])
    clip = wgan_ext.FusedClipper(critic, 0.01)
    params = list(critic.parameters())
    stop = threading.Event()
    errors = []

    def work(fn):
        try:
            while not stop.is_set():
                fn()
        except BaseException as e:
            errors.append(repr(e))

    def swap():  # moves a TensorImpl out of its Python object; refused while a call holds it
        try:
            torch.utils.swap_tensors(params[0], torch.nn.Parameter(torch.randn(256, 256) * 5))
        except RuntimeError:
            pass

    threads = [threading.Thread(target=work, args=(clip,)), threading.Thread(target=work, args=(clip,)),
               threading.Thread(target=work, args=(lambda: wgan_ext.fused_clip_(critic, 0.01),)),
               threading.Thread(target=work, args=(swap,))]
    for t in threads:
        t.start()
    for r in range(400):  # new memory, of new sizes, while the others clip
        p = params[r % len(params)]
        p.data = torch.randn(p.numel() * (1 + r % 3))[: p.numel()].view_as(p) * 5
    stop.set()
    for t in threads:
        t.join()
    clip()
    assert not errors, errors
    assert all(p.abs().max().item() <= 0.01 for p in critic.parameters())
    print("clean")
""")


def test_concurrent_calls_while_memory_moves_never_corrupt_memory():
    # Two threads call one FusedClipper and a third calls fused_clip_ while the main thread
    # gives parameters new memory and a fourth swaps a parameter's TensorImpl away: no call may
    # write freed memory or read a freed TensorImpl (a double free or a segfault would end the
    # process), and at the end every weight is clipped. In a subprocess, so a crash fails the
    # test instead of the run.
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "clean"


# ----------------------------------------------------------------------------- flatten
@pytest.mark.parametrize("device,backend", _backends())
def test_flatten_keeps_training_identical_and_clips_one_block(device, backend):
    # flatten=True moves every parameter into one buffer: values, shapes, requires_grad,
    # grads and optimizer state stay, and RMSprop + clip then runs bit for bit as without it.
    def make():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 1)).to(device)

    plain, flat = make(), make()
    opts = [torch.optim.RMSprop(m.parameters(), lr=5e-2) for m in (plain, flat)]
    x = torch.randn(32, 5, device=device)
    for m, o in zip((plain, flat), opts):  # optimizer state exists before flattening
        (-m(x).mean()).backward()
        o.step()
    before = [(p.detach().clone(), p.grad.clone(), p.requires_grad) for p in flat.parameters()]
    clips = [FusedClipper(plain, 0.05, backend=backend), FusedClipper(flat, 0.05, backend=backend, flatten=True)]
    for p, (v, g, rg) in zip(flat.parameters(), before):
        assert_bit_equal(p.detach(), v)
        assert_bit_equal(p.grad, g)
        assert p.requires_grad == rg
    ptrs = [(p.data_ptr(), p.numel() * p.element_size()) for p in flat.parameters()]
    assert all(a + n == b for (a, n), (b, _) in zip(ptrs, ptrs[1:]))  # one block, in order
    for _ in range(4):
        for m, o, clip in zip((plain, flat), opts, clips):
            o.zero_grad()
            (-m(x).mean()).backward()
            o.step()
            clip()
    for a, b in zip(plain.parameters(), flat.parameters()):
        assert_bit_equal(b.detach(), a.detach())
        assert b.abs().max() <= torch.tensor(0.05)
    restored = make()
    restored.load_state_dict(flat.state_dict())
    for a, b in zip(restored.parameters(), flat.parameters()):
        assert_bit_equal(a.detach(), b.detach())


def test_flatten_moves_only_whole_contiguous_owners():
    base = torch.zeros(40)
    sliced = torch.nn.Parameter(base[10:20])  # a view of a bigger storage
    transposed = torch.nn.Parameter(torch.zeros(4, 6).t())
    shared_a = torch.zeros(8)
    shared_b = shared_a.view(2, 4)  # another tensor on the same storage
    own = [torch.nn.Parameter(torch.full((3,), 0.5)), torch.nn.Parameter(torch.full((2, 2), -0.5))]
    ts = [sliced, own[0], transposed, shared_a, own[1], shared_b]
    storages = [t.untyped_storage().data_ptr() for t in ts]
    clip = FusedClipper(ts, 0.25, backend="cpu", flatten=True)
    for i in (0, 2, 3, 5):
        assert ts[i].untyped_storage().data_ptr() == storages[i]  # stayed
    assert own[0].data_ptr() + 3 * 4 == own[1].data_ptr()  # moved, adjacent
    assert own[0].untyped_storage().data_ptr() != storages[1]
    sliced.data.fill_(1.0)
    clip()
    assert torch.equal(base[10:20], torch.full((10,), 0.25))
    assert torch.equal(own[0].detach(), torch.full((3,), 0.25))
    assert torch.equal(own[1].detach(), torch.full((2, 2), -0.25))


def test_flatten_then_moved_parameter_is_still_clipped():
    critic = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    clip = FusedClipper(critic, 0.01, backend="cpu", flatten=True)
    critic[1].weight.data = make_values(16, torch.float32, "cpu", 70).view(4, 4) * 10
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(100)
    before = [p.detach().clone() for p in critic.parameters()]
    clip()
    for p, b in zip(critic.parameters(), before):
        check(p.detach(), b, -0.01, 0.01, "cpu")


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_clipper_follows_memory_moves_devices_and_dtypes():
    # Each call reads every tensor's memory again; a tensor that leaves the GPU makes the op
    # refuse the list (nothing written) and the call takes fused_clip_'s path per device.
    critic = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)).cuda()
    clip = FusedClipper(critic, 0.01, backend="auto")
    for change in (lambda: None,
                   lambda: setattr(critic[0].weight, "data", torch.randn(64, 64, device="cuda")),
                   lambda: setattr(critic[1].bias, "data", torch.randn(8, device="cuda", dtype=torch.float16)),
                   lambda: setattr(critic[1].weight, "data", torch.randn(16, 64, device="cuda")[::2]),
                   lambda: setattr(critic[0].bias, "data", torch.randn(64))):  # to the CPU
        change()
        before = _scramble(critic)
        clip()
        for p, b in zip(critic.parameters(), before):
            check(p.detach(), b, -0.01, 0.01, "cuda" if p.is_cuda else "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here")
def test_cuda_clipper_many_tensors_several_launches():
    ts = [make_values(n, torch.float32, "cuda", n) for n in range(1, 4000, 1)]
    clip = FusedClipper(ts, 0.01)
    for _ in range(2):
        with torch.no_grad():
            for t in ts:
                t.mul_(3)
        before = [t.clone() for t in ts]
        clip()
        for t, b in zip(ts, before):
            check(t, b, -0.01, 0.01, "cuda")
