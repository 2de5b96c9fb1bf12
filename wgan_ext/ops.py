"""``fused_clip_``: clamp every parameter of a critic in place, in one fused kernel per device.

Weight-clipped WGAN (Arjovsky et al. 2017, Algorithm 1 line 7) clamps every critic weight to
``[-c, c]`` after each critic update. The usual ``for p in critic.parameters(): p.data.clamp_()``
costs one dispatch (and on GPU one kernel launch) per tensor; this op costs one per device.

Flow: argument checks (all before any write) -> group by device -> compiled kernel for CPU / CUDA
(``torch.ops.wgan_ext.fused_clip_``) or the pure-PyTorch reference (:mod:`wgan_ext.fallback`).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Literal, Sequence, Tuple, Union

import torch

from . import _ext, _plan_cache
from .fallback import clamp_tensors_

__all__ = ["fused_clip_", "FusedClipper", "resolve_bounds", "SUPPORTED_DTYPES", "Backend"]

Backend = Literal["auto", "cuda", "cpu", "torch"]
Bounds = Union[float, Tuple[float, float]]
Params = Union[torch.nn.Module, torch.Tensor, Iterable[torch.Tensor]]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ("auto", "cuda", "cpu", "torch")
# Devices with a compiled kernel; anything else (meta, mps, xpu...) takes the reference path.
_KERNEL_DEVICES = ("cpu", "cuda")


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
    # bool is a numbers.Real; a clip bound of True is always a bug.
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_complex:
            v = v.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


def _collect(critic: Params) -> list:
    if isinstance(critic, torch.nn.Module):
        return list(critic.parameters())  # already de-duplicated (tied weights appear once)
    if isinstance(critic, torch.Tensor):
        return [critic]
    try:
        return list(critic)
    except TypeError:
        raise TypeError(
            "critic must be an nn.Module, a tensor or an iterable of tensors, "
            f"got {type(critic).__name__}"
        ) from None


def _check_tensors(tensors: Sequence[object]) -> None:
    """Raise a clear error for the first tensor the kernels cannot clamp. Writes nothing."""
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"critic[{i}] must be a tensor or parameter, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise TypeError(f"critic[{i}] has layout {t.layout}; only dense (strided) tensors can be clipped")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"critic[{i}] has dtype {t.dtype}; fused_clip_ supports "
                f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
            )
        if t.is_neg():
            raise TypeError(
                f"critic[{i}] is a negative view (torch._neg_view); its memory holds the negated "
                "values: pass t.resolve_neg() or a tensor that owns its values"
            )
        if t.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"critic[{i}] is an inference tensor; in-place updates to it are only allowed "
                "in InferenceMode (as for clamp_)"
            )


def _dedupe(tensors: list) -> list:
    # The same tensor twice (tied weights listed by hand) would be clamped twice: harmless for the
    # values, but its version would bump twice. (The compiled kernels de-duplicate by themselves.)
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _group_by_device(tensors: list) -> dict:
    groups: dict = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return groups


def fused_clip_(critic: Params, c: Bounds, *, backend: Backend = "auto") -> None:
    """Clamp every parameter of ``critic`` in place to ``[-c, c]`` (or ``[lo, hi]``).

    Equivalent, bit for bit, to ``for p in params: p.clamp_(lo, hi)`` on each tensor's own device
    (+-inf go to the bounds, bounds are rounded to each tensor's dtype as ``clamp_`` rounds
    them), but one kernel per device instead of one per tensor. A NaN keeps its exact bits on
    every backend (``clamp_``'s CPU vector loop may quiet a float16/bfloat16 NaN; see
    :mod:`wgan_ext.fallback`).

    Args:
        critic: an ``nn.Module`` (its ``parameters()``), a tensor, or an iterable of tensors /
            parameters. Float16, bfloat16, float32 and float64, any shape or stride, on any mix
            of devices (grouped per device). Tied parameters are clamped once.
        c: a positive number ``c`` for ``[-c, c]``, or an explicit ``(lo, hi)`` pair with
            ``lo <= hi`` (torchgan's ``clip=(lo, hi)`` form). Must be finite.
        backend: ``"auto"`` (compiled kernel for the tensors' device if one loads, else the
            PyTorch reference with a one-time warning saying why), ``"cuda"`` / ``"cpu"``
            (that compiled kernel or an error), or ``"torch"`` (the reference, always).

    Acts as an in-place op for autograd: each tensor's version counter is bumped, so a backward
    that saved a weight before the clip raises as it would after ``clamp_``. Leaf parameters
    that require grad can be passed without ``torch.no_grad()``.

    Raises:
        TypeError: an element that is not a dense floating tensor of a supported dtype, or a
            bound that is not a real number.
        ValueError: ``c <= 0``, a non-finite bound, ``lo > hi``, or an unknown ``backend``, or
            tensors on a device the requested backend does not serve.
        RuntimeError: ``backend="cuda"``/``"cpu"`` when that kernel is not available.

    Nothing is modified when an error is raised.

    For an ``nn.Module``, the first call's argument work (collecting, checking and grouping the
    parameters) is cached with the module and re-used while its parameters are the same tensors:
    each later call checks that in C++ (a fingerprint of the module tree, ~0.1 us per module)
    instead of walking ``parameters()`` and checking each tensor in Python (~1-3 us each). Any change (a parameter
    added, removed, replaced or swapped, memory moved by ``p.data = ...`` or ``.to()``) is seen
    and handled as on a first call. The cache holds no reference to any tensor.
    :class:`FusedClipper` skips even that check: for the tightest training loop.

    Example:
        >>> critic = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> fused_clip_(critic, 0.01)
        >>> all(p.abs().max() <= 0.01 for p in critic.parameters())
        True
    """
    lo, hi = resolve_bounds(c)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if (isinstance(critic, torch.nn.Module) and backend != "torch"
            and not torch.compiler.is_compiling()):
        # A module's plan is cached while its parameters stay the same tensors
        # (wgan_ext/_plan_cache.py): the calls after the first skip the parameters() walk
        # and the Python checks.
        state = _plan_cache.try_clip_(critic, lo, hi, backend)
        if state != _plan_cache.CLIPPED:
            groups = _clip_list_(_collect(critic), lo, hi, backend)
            if state == _plan_cache.STALE and groups:
                _plan_cache.remember(critic, backend, groups)
        return
    _clip_list_(_collect(critic), lo, hi, backend)


def _clip_list_(tensors: list, lo: float, hi: float, backend: str) -> list:
    """Check, de-duplicate, group by device and clip. Returns the ``(group, use_kernel)`` list it
    ran (empty under dynamo or for no tensors)."""
    if not tensors:
        return []
    if torch.compiler.is_compiling():
        # Under dynamo: no Python-side checks on tensor objects (they would graph-break); the
        # op's fake kernel and real kernel check for themselves.
        for device, group in _group_by_device(tensors).items():
            _run(group, lo, hi, _choose(device, backend, compiling=True))
        return []

    # Every check runs here, in Python, before the op is called: the compiled kernels check too,
    # but an error thrown inside the extension is the path to avoid (on one GPU machine, a build
    # with that image's own g++ crashed the process when a kernel raised). FusedClipper pays
    # for the checks once instead of per call.
    _check_tensors(tensors)
    tensors = _dedupe(tensors)
    plan = [(group, _choose(device, backend, compiling=False))
            for device, group in _group_by_device(tensors).items()]
    for group, use_kernel in plan:  # every check done: now write
        _run(group, lo, hi, use_kernel)
    return plan


def _run(group: list, lo: float, hi: float, use_kernel: bool) -> None:
    if use_kernel:
        torch.ops.wgan_ext.fused_clip_(group, lo, hi)
    else:
        clamp_tensors_(group, lo, hi)


class FusedClipper:
    """``fused_clip_`` with the per-call work done once: for the inner loop of training.

    Collects and validates ``critic``'s parameters, resolves the bounds and picks the backend at
    construction; each call then costs one kernel per device. Build a new one (or call
    :meth:`refresh`) if the critic's set of parameters changes, e.g. after ``load_state_dict``
    with ``assign=True`` or adding a layer; moving values in place (optimizer steps,
    ``copy_``, ``.to()`` on the module) needs nothing.

    Args:
        critic, c, backend: as for :func:`fused_clip_`.
        flatten: move the parameters of each (device, dtype) into one contiguous buffer, in
            order (``p.data`` becomes a view of it; values, shapes, ``requires_grad``, ``.grad``
            and optimizer state are kept). The clip is then one clamp over one block of memory:
            on a critic of many small tensors that is the cost of clamping a single flat
            tensor, where separate allocations cost per tensor (and, on CUDA, leave most
            blocks nearly empty). Do it before anything keeps the old memory: an alias taken
            earlier (``w = p.data``), a CUDA graph or a compiled graph that captured pointers.
            Only tensors that are contiguous and own their whole storage move; the others are
            clipped where they are. Clipping stays correct if a parameter later moves away
            (``p.data = ...``, ``.to()``): the call notices and clips it where it now is.

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
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if not isinstance(flatten, bool):
            raise TypeError(f"flatten must be a bool, got {type(flatten).__name__} {flatten!r}")
        self.backend = backend
        self.flatten = flatten
        self._source = critic
        self.refresh()

    def refresh(self) -> None:
        """Collect the parameters again (after the critic's set of parameters changed)."""
        tensors = _collect(self._source)
        _check_tensors(tensors)
        tensors = [t for t in _dedupe(tensors) if t.numel() > 0]
        groups = _group_by_device(tensors)
        kernels = {device: _choose(device, self.backend, compiling=False) for device in groups}
        if self.flatten:  # every check done: now move memory
            for group in groups.values():
                _flatten_(group)
        # (group, ClipPlan or None, its bound clip_ or None) per device. The bound method is
        # looked up once: each `handle.clip_` lookup builds a new script method object (~4 us,
        # more than the whole clip of an 800-tensor CPU critic's bookkeeping).
        self._plan = []
        for device, group in groups.items():
            # The compiled path keeps the list on the C++ side (torch.classes.wgan_ext.ClipPlan):
            # passing a Python list to an op converts it tensor by tensor on every call.
            handle = torch.classes.wgan_ext.ClipPlan(group) if kernels[device] else None
            self._plan.append((group, handle, handle.clip_ if handle is not None else None))

    @property
    def tensors(self) -> list:
        """The tensors this clipper clamps, grouped by device."""
        return [t for group, _, _ in self._plan for t in group]

    def spans(self) -> list:
        """Per device group: the blocks of memory a compiled CPU plan clamps (tensors adjacent
        in memory count once, so a flattened critic gives 1 per dtype); -1 where the group goes
        through the op or the reference."""
        return [h.spans() if h is not None else -1 for _, h, _ in self._plan]

    def __call__(self) -> None:
        """Clamp every collected tensor in place to ``[lo, hi]``."""
        if torch.compiler.is_compiling():  # a script object cannot be traced: use the op
            for group, handle, _ in self._plan:
                _run(group, self.lo, self.hi, handle is not None)
            return
        for group, _, clip_ in self._plan:
            if clip_ is not None:
                clip_(self.lo, self.hi)
            else:
                clamp_tensors_(group, self.lo, self.hi)

    def __repr__(self) -> str:
        n = sum(len(g) for g, _, _ in self._plan)
        return (f"FusedClipper({n} tensors, lo={self.lo}, hi={self.hi}, backend={self.backend!r}"
                f"{', flatten=True' if self.flatten else ''})")


def _flatten_(tensors: Sequence[torch.Tensor]) -> None:
    """Move ``tensors`` into one contiguous buffer per (device, dtype), in order, in place.

    Each moved tensor keeps its object, values, shape and autograd state; its ``.data`` becomes
    a view of the shared buffer, right after the previous moved tensor of its (device, dtype),
    so that ``fused_clip_``'s kernels clamp them as one block. Only tensors that are contiguous
    and the sole view of their whole storage are moved (a slice, a transposed or expanded
    tensor, or two listed tensors sharing memory keep theirs); a (device, dtype) with fewer than
    two of them is left alone. All buffers are allocated before the first tensor moves.
    """
    owners: dict = {}
    for t in tensors:
        if t.numel() > 0:
            key = (t.device, t.untyped_storage().data_ptr())
            owners[key] = owners.get(key, 0) + 1
    runs: dict = {}
    for t in tensors:
        if (t.numel() > 0 and t.is_contiguous() and t.storage_offset() == 0
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


def _choose(device: torch.device, backend: str, compiling: bool) -> bool:
    """True to run the compiled kernel on ``device``, False for the reference. May raise."""
    if backend == "torch":
        return False
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise ValueError(f"backend={backend!r} cannot clip tensors on device {device}")
        if compiling:
            return _ext.is_loaded(backend)
        _ext.require(backend)
        return True
    if device.type not in _KERNEL_DEVICES:
        return False
    if compiling:  # never build or warn while dynamo traces; use what is already loaded
        return _ext.is_loaded(device.type)
    return _ext.available(device.type, warn=True)
