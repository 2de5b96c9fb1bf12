"""``fused_clip_`` and ``FusedClipper``: clamp every critic parameter in place, one kernel per device.

Weight-clipped WGAN (Arjovsky et al. 2017, Algorithm 1 line 7) clamps every critic weight to
``[-c, c]`` after each critic update. The usual ``for p in critic.parameters(): p.data.clamp_()``
costs one dispatch (and on GPU one kernel launch) per tensor; this costs one per device.

Flow: bounds -> ``critic.parameters()`` (or the given tensors) -> per device, the op
``torch.ops.wgan_ext.fused_clip_`` (whose kernels run the checks, csrc/checks.h) or, where no
compiled kernel serves the device, the pure-PyTorch fallback (:mod:`wgan_ext.fallback`, the same
checks in Python). A call that spans devices runs the fallback's checks on every tensor first, so
an error still leaves every tensor as it was.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Literal, Sequence, Tuple, Union

import torch

from . import _ext, fallback
from .distributed import PLAIN_TYPES, local_tensor

__all__ = ["fused_clip_", "FusedClipper", "resolve_bounds", "SUPPORTED_DTYPES", "Backend"]

Backend = Literal["auto", "cuda", "cpu", "torch"]
Bounds = Union[float, Tuple[float, float]]
Params = Union[torch.nn.Module, torch.Tensor, Iterable[torch.Tensor]]

SUPPORTED_DTYPES = fallback.SUPPORTED_DTYPES
_BACKENDS = ("auto", "cuda", "cpu", "torch")


def resolve_bounds(c: Bounds, name: str = "c") -> tuple[float, float]:
    """Turn ``c`` (a positive number, or a ``(lo, hi)`` pair) into finite ``(lo, hi)`` floats.

    Raises ``TypeError`` for a value of the wrong type and ``ValueError`` for ``c <= 0``,
    a non-finite bound or ``lo > hi``, naming ``name`` and the value.
    """
    if isinstance(c, (tuple, list)):
        if len(c) != 2:
            raise ValueError(f"{name} must be a positive number or a (lo, hi) pair, got {c!r}")
        lo, hi = (_as_float(v, f"{name}[{i}]") for i, v in enumerate(c))
        if lo > hi:
            raise ValueError(f"{name}=(lo, hi) needs lo <= hi, got {c!r}")
        return lo, hi
    value = _as_float(c, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 (weights are clipped to [-{name}, {name}]), got {c!r}")
    return -value, value


def _as_float(v: object, name: str) -> float:
    # bool is a numbers.Real (and a bool tensor converts to 1.0); a clip bound of True is a bug.
    if isinstance(v, torch.Tensor) and v.numel() == 1 and (v.dtype.is_floating_point or (
            not v.dtype.is_complex and v.dtype != torch.bool)):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond any float, e.g. 10**400
        f = math.inf
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


def _check_backend(backend: object) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def _collect(critic: Params) -> Sequence:
    """What ``critic.parameters()`` yields (a module), ``[critic]`` (a tensor), or the items of
    an iterable, as a list or tuple holding strong references."""
    if isinstance(critic, torch.nn.Module):
        return list(critic.parameters())
    if isinstance(critic, torch.Tensor):
        return [critic]
    if isinstance(critic, (list, tuple)):
        return critic
    try:
        return list(critic)
    except TypeError:
        raise TypeError(
            "critic must be an nn.Module, a tensor or an iterable of tensors, "
            f"got {type(critic).__name__}"
        ) from None


def _by_device(tensors: Sequence) -> tuple[dict, list]:
    """The tensors that hold values (a DTensor's local shard; lazy parameters skipped) per
    (device, tensor subclass or None), and the DTensors whose versions to bump. Plain tensors
    and each subclass are separate calls, so a subclass's ``__torch_dispatch__`` sees only its
    own tensors."""
    groups: dict = {}
    wrappers = []
    for i, t in enumerate(tensors):
        if type(t) not in PLAIN_TYPES:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"fused_clip_: tensors[{i}] must be a tensor or parameter, got "
                                f"{type(t).__name__}")
            if torch.nn.parameter.is_lazy(t):
                continue  # nothing to clip yet
            local = local_tensor(t)
            if local is not t:
                wrappers.append(t)
                t = local
        key = (t.device, None if type(t) in PLAIN_TYPES else type(t))
        group = groups.get(key)
        if group is None:
            group = groups[key] = []
        group.append(t)
    return groups, wrappers


def _kernel_serves(device: torch.device, backend: str) -> bool:
    """Whether the compiled op clamps ``device``'s tensors; raises if ``backend`` cannot."""
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise ValueError(f"fused_clip_: backend={backend!r} clamps {backend} tensors, got "
                             f"tensors on {device}")
        _ext.require(backend)
        return True
    return backend == "auto" and device.type in ("cpu", "cuda") and _ext.available(
        device.type, warn=True)


def _clip(tensors: Sequence, lo: float, hi: float, backend: str, dry_run: bool = False) -> None:
    """Check ``tensors`` and clamp them (with ``dry_run``, only check). Writes nothing if
    anything raises."""
    if torch.compiler.is_compiling():
        _clip_traced(tensors, lo, hi, backend)
        return
    if (not dry_run and tensors and all(type(t) in PLAIN_TYPES for t in tensors)
            and _kernel_serves(tensors[0].device, backend)):
        try:  # the common case, one device: the op checks that too, before any write
            torch.ops.wgan_ext.fused_clip_(tensors, lo, hi)
            return
        except (ValueError, NotImplementedError):  # several devices, ...: grouped below, or
            pass  # raised again by the same check
    groups, wrappers = _by_device(tensors)
    kernel = {key: _kernel_serves(key[0], backend) for key in groups}
    if dry_run or len(groups) > 1:
        fallback.check([t for group in groups.values() for t in group], lo, hi)
    if dry_run:
        return
    # Subclass groups first: their __torch_dispatch__ may raise where no check can tell, and then
    # the plain tensors are still untouched.
    for key, group in sorted(groups.items(), key=lambda item: item[0][1] is None):
        if kernel[key]:
            torch.ops.wgan_ext.fused_clip_(group, lo, hi)
        else:
            fallback.check(group, lo, hi)
            fallback.clamp_(group, lo, hi)
    for t in wrappers:
        torch.autograd.graph.increment_version(t)


def _clip_traced(tensors: Sequence, lo: float, hi: float, backend: str) -> None:
    # Under torch.compile: the op per device (its fake kernel traces it; its real kernels check
    # at run time) or the fallback's foreach ops; nothing here loads or builds.
    groups: dict = {}
    for t in tensors:
        t = local_tensor(t)
        groups.setdefault(t.device, []).append(t)
    for device, group in groups.items():
        if backend != "torch" and device.type in ("cpu", "cuda") and _ext.is_loaded(device.type):
            torch.ops.wgan_ext.fused_clip_(group, lo, hi)
        else:
            fallback.clamp_(group, lo, hi)


def fused_clip_(critic: Params, c: Bounds, *, backend: Backend = "auto") -> None:
    """Clamp every parameter of ``critic`` in place to ``[-c, c]`` (or ``[lo, hi]``).

    Equivalent to ``for p in params: p.clamp_(lo, hi)`` on each tensor's own device -- every
    number bit for bit (+-inf go to the bounds, -0.0 stays -0.0, bounds are rounded to each
    dtype as ``clamp_`` rounds them), and a NaN stays NaN -- but one kernel per device instead
    of one per tensor. Nothing is cached between calls: each call clamps what
    ``critic.parameters()`` yields at that moment.

    Args:
        critic: an ``nn.Module`` (its ``parameters()``), a tensor, or an iterable of tensors /
            parameters. Float16, bfloat16, float32 and float64, any shape or stride, on any mix
            of devices (grouped per device). Tied parameters are clamped once; uninitialized
            (lazy) and empty parameters are skipped. DTensor parameters (FSDP2) have their
            local shards clamped in place, without communication, for Shard and Replicate
            placements; a Partial placement raises.
        c: a positive number ``c`` for ``[-c, c]``, or an explicit ``(lo, hi)`` pair with
            ``lo <= hi`` (torchgan's ``clip=(lo, hi)`` form). Must be finite and fit every
            tensor's dtype (``c=1e5`` and a float16 tensor raise, as ``clamp_`` does on CPU).
        backend: ``"auto"`` (compiled kernel for the tensors' device if one loads, else the
            PyTorch fallback with a one-time warning saying why), ``"cuda"`` / ``"cpu"``
            (that compiled kernel or an error), or ``"torch"`` (the fallback, always).

    Acts as an in-place op for autograd: each tensor's version counter is bumped once, so a
    backward that saved a weight before the clip raises as it would after ``clamp_``. Leaf
    parameters that require grad can be passed without ``torch.no_grad()``.

    Raises:
        TypeError: an element that is not a dense floating tensor of a supported dtype (or a
            negative view), or a bound that is not a real number.
        ValueError: ``c <= 0``, a non-finite bound, ``lo > hi``, a bound that overflows a
            tensor's dtype, a tensor whose elements share memory, an unknown ``backend``, or
            tensors on a device the requested backend does not serve.
        RuntimeError: ``backend="cuda"``/``"cpu"`` when that kernel is not available, or an
            inference tensor outside InferenceMode.

    Nothing is modified when an error is raised.

    Example:
        >>> critic = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> fused_clip_(critic, 0.01)
        >>> all(p.abs().max() <= 0.01 for p in critic.parameters())
        True
    """
    lo, hi = resolve_bounds(c)
    _check_backend(backend)
    _clip(_collect(critic), lo, hi, backend)


class FusedClipper:
    """``fused_clip_`` for the inner loop of training, with the parameters collected once.

    Holds strong references to the tensors it clamps and does not follow the critic: after
    anything that replaces parameter objects -- ``load_state_dict(assign=True)``, adding a layer
    -- call :meth:`refresh` (until then it clamps the tensors it holds). What changes inside a
    held tensor is followed: every call clamps the memory each tensor has at that moment
    (``p.data = ...``, ``module.to()``, ``torch.utils.swap_tensors``, which its references do
    not block).

    A call on plain tensors of one device is one call of the op on the held list (its kernel
    checks every tensor again: nothing else is shared between calls, so several threads may call
    one clipper); other calls take :func:`fused_clip_`'s path. On CUDA the op passes the
    tensors' addresses as kernel arguments, so a call captured in a CUDA graph replays as
    captured (one launch per dtype, more only past 1,055 tensors or 2,560 chunks of 64 Ki
    elements with CUDA 13; 104 tensors or 320 chunks before).

    Args:
        critic, c, backend: as for :func:`fused_clip_`. An iterator (``critic.parameters()``)
            is read once, at construction; :meth:`refresh` then re-checks the same tensors.
        flatten: move the parameters of each (device, dtype) into one contiguous buffer, in
            order (``p.data`` becomes a view of it; values, shapes, ``requires_grad``,
            ``.grad`` and optimizer state are kept). The clip is then one clamp over one block
            of memory. Do it before anything keeps the old memory: an alias taken earlier
            (``w = p.data``), a CUDA graph or a compiled graph that captured pointers. Only
            tensors that are contiguous and own their whole storage move.

    Example:
        >>> critic = torch.nn.Linear(4, 1)
        >>> clip = FusedClipper(critic, 0.01)
        >>> clip()   # after each critic optimizer step
        >>> bool(critic.weight.abs().max() <= 0.01)
        True
    """

    def __init__(self, critic: Params, c: Bounds, *, backend: Backend = "auto",
                 flatten: bool = False) -> None:
        self.lo, self.hi = resolve_bounds(c)
        _check_backend(backend)
        if not isinstance(flatten, bool):
            raise TypeError(f"flatten must be a bool, got {type(flatten).__name__} {flatten!r}")
        self.backend = backend
        self.flatten = flatten
        # A one-shot iterator is read now, so refresh() finds the same tensors again.
        re_iterable = isinstance(critic, (torch.nn.Module, torch.Tensor, list, tuple))
        self._source = critic if re_iterable else tuple(_collect(critic))
        self.refresh()

    def refresh(self) -> None:
        """Collect and check the tensors again (after the critic's parameters were replaced)."""
        tensors = tuple(_collect(self._source))
        _clip(tensors, self.lo, self.hi, self.backend, dry_run=True)  # raises, writes nothing
        if self.flatten:
            _flatten_(tensors)
        groups, wrappers = _by_device(tensors)
        direct = (len(groups) == 1 and all(type(t) in PLAIN_TYPES for t in tensors)
                  and _kernel_serves(next(iter(groups))[0], self.backend))
        # One assignment, so a call in another thread sees the old parts or the new ones.
        self._parts = (tensors, list(tensors) if direct else None)

    @property
    def tensors(self) -> list:
        """The tensors this clipper clamps."""
        return list(self._parts[0])

    def __call__(self) -> None:
        """Clamp every held tensor in place to ``[lo, hi]``."""
        tensors, direct = self._parts
        if direct is not None and not torch.compiler.is_compiling():
            try:
                torch.ops.wgan_ext.fused_clip_(direct, self.lo, self.hi)
                return
            except ValueError:  # e.g. some tensors moved to another device (nothing written)
                pass
        _clip(tensors, self.lo, self.hi, self.backend)

    def __repr__(self) -> str:
        return (f"FusedClipper({len(self._parts[0])} tensors, lo={self.lo}, hi={self.hi}, "
                f"backend={self.backend!r}{', flatten=True' if self.flatten else ''})")


def _flatten_(tensors: Sequence[torch.Tensor]) -> None:
    """Move ``tensors`` into one contiguous buffer per (device, dtype), in order, in place.

    Each moved tensor keeps its object, values, shape and autograd state; its ``.data`` becomes
    a view of the shared buffer, right after the previous moved tensor of its (device, dtype),
    so that the kernels clamp them as one block. Only plain tensors that are contiguous and the
    sole view of their whole storage are moved (a slice, a transposed or expanded tensor, or two
    listed tensors sharing memory keep theirs); a (device, dtype) with fewer than two of them is
    left alone. All buffers are allocated before the first tensor moves.
    """
    plain = [t for t in dict.fromkeys(tensors)
             if type(t) in PLAIN_TYPES and t.numel() > 0]
    owners: dict = {}
    for t in plain:
        key = (t.device, t.untyped_storage().data_ptr())
        owners[key] = owners.get(key, 0) + 1
    runs: dict = {}
    for t in plain:
        if (t.is_contiguous() and t.storage_offset() == 0
                and t.untyped_storage().nbytes() == t.numel() * t.element_size()
                and owners[(t.device, t.untyped_storage().data_ptr())] == 1):
            runs.setdefault((t.device, t.dtype), []).append(t)
    runs = {k: v for k, v in runs.items() if len(v) > 1}
    with torch.no_grad():
        buffers = {k: torch.empty(sum(t.numel() for t in v), device=k[0], dtype=k[1])
                   for k, v in runs.items()}
        for key, run in runs.items():
            pieces = torch.split(buffers[key], [t.numel() for t in run])
            views = [v.view(t.shape) for v, t in zip(pieces, run)]
            torch._foreach_copy_(views, [t.detach() for t in run])
            for t, v in zip(run, views):
                t.data = v
