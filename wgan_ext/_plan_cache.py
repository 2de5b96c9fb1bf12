"""Per-module plans for ``fused_clip_(module, c)``: the first call's argument work, re-used while
the module's parameters are the same tensors.

Without it, each call walks ``module.parameters()`` (nested Python generators, ~1-2 us per
module) and checks every tensor in Python: on a critic of 800 small tensors that is ~20x the
cost of the clamp itself. With it, a call costs a fingerprint of the module tree taken in C++
(the address of each module type and each parameter's TensorImpl, ~0.1 us per module) and the
plan's own per-tensor checks (csrc/fused_clip.cpp, ClipPlan).

Why a hit is safe:

* The fingerprint reads the same ``_modules`` / ``_parameters`` dicts that ``parameters()``
  reads, and a tree is only cached when none of its module types overrides how parameters are
  listed (``_TREE_METHODS``) or defines class attributes named like those dicts. The entry keeps
  those types alive, so their addresses stay theirs.
* An equal fingerprint means every TensorImpl address in the plan is a parameter the module
  holds right now, so alive. The plans hold those bare addresses and no reference: the cache
  keeps no tensor memory alive, and does not block ``torch.utils.swap_tensors`` (which refuses
  a TensorImpl anything else references, even weakly). If a TensorImpl was freed and a new one
  took its address, the plan's per-call check reads the new one's fields (pointer, size, dtype,
  keys), so it still writes exactly that tensor's memory.
* What a fingerprint cannot see (``p.data = ...``, ``.to()``, ``resize_``, an inference tensor)
  the plan checks on each call; when it cannot vouch for the call it writes nothing and the
  call takes the checked path (``wgan_ext.ops``), which raises any error in Python and
  rebuilds the entry.

Entries are keyed weakly by module and by backend, so a module's entry dies with it. Like any
in-place op, a call must not race with another thread changing the same module.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

from . import _ext

__all__ = ["try_clip_", "remember", "clear"]

# How nn.Module lists its parameters; a type that overrides any of these may list something
# else than the dicts the fingerprint reads.
_TREE_METHODS = ("parameters", "named_parameters", "_named_members", "named_modules")

# try_clip_ results
CLIPPED, STALE, UNCACHEABLE = "clipped", "stale", "uncacheable"


class _Entry:
    __slots__ = ("fingerprint", "types", "plans", "ready", "clips")

    def __init__(self, fingerprint: Optional[bytes], types: tuple, plans: Optional[list]) -> None:
        self.fingerprint = fingerprint
        self.types = types  # keeps the fingerprinted types (and so their addresses) alive
        self.plans = plans  # None: this tree is not cached (the checked path every call)
        # Bound once: each attribute lookup on a script object builds a new method (~4 us).
        self.ready = [p.ready for p in plans] if plans else []
        self.clips = [p.try_clip_ for p in plans] if plans else []


_entries: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _entry(module: torch.nn.Module, backend: str) -> Optional[_Entry]:
    try:
        per_backend = _entries.get(module)
    except TypeError:  # a module type that is not hashable
        return None
    return per_backend.get(backend) if per_backend is not None else None


def try_clip_(module: torch.nn.Module, lo: float, hi: float, backend: str) -> str:
    """Clip ``module`` through its cached plan if that plan still describes it.

    Returns ``CLIPPED`` (done), ``STALE`` (nothing written; take the checked path, then
    :func:`remember`) or ``UNCACHEABLE`` (nothing written; take the checked path, nothing to
    remember).
    """
    fingerprint = _ext.module_fingerprint()
    entry = _entry(module, backend)
    if fingerprint is None or entry is None:
        return STALE
    if entry.fingerprint is None:
        return UNCACHEABLE
    if not fingerprint(module, entry.fingerprint):
        return STALE
    if entry.plans is None:
        return UNCACHEABLE
    clips = entry.clips
    if len(clips) == 1:
        return CLIPPED if clips[0](lo, hi) else STALE
    # Several devices: every plan must be able to clip before the first one writes.
    if not all(ready(lo, hi) for ready in entry.ready):
        return STALE
    for clip in clips:
        if not clip(lo, hi):
            # Only if a tensor became strided or died between ready() and here; the checked
            # path clamps everything again (values are idempotent under a clamp).
            return STALE
    return CLIPPED


def remember(module: torch.nn.Module, backend: str, groups: list) -> None:
    """Cache a plan for ``module`` after the checked path clipped it.

    ``groups`` is that path's list of ``(tensors, use_kernel)`` per device, every tensor
    already checked and de-duplicated.
    """
    fingerprint_fn = _ext.module_fingerprint()
    if fingerprint_fn is None:
        return
    try:
        per_backend = _entries.setdefault(module, {})
    except TypeError:
        return
    fingerprint = fingerprint_fn(module)
    if fingerprint is None:  # a cycle or something that is not a plain module tree: never
        per_backend[backend] = _Entry(None, (), None)
        return
    # The types the fingerprint walked (the same dicts, so a tree with a cycle never gets here).
    found: dict = {}
    stack = [module]
    while stack:
        m = stack.pop()
        found[type(m)] = None
        stack.extend(child for child in m._modules.values() if child is not None)
    types = tuple(found)
    # Also no class attribute named like the dicts: the fingerprint reads the instance dict.
    plain = all(getattr(t, name, None) is getattr(torch.nn.Module, name) for t in types
                for name in _TREE_METHODS) and not any(
        hasattr(t, "_parameters") or hasattr(t, "_modules") for t in types)
    if not plain or not all(use_kernel for _, use_kernel in groups):
        per_backend[backend] = _Entry(fingerprint, types, None)
        return
    plans = [torch.classes.wgan_ext.ClipPlan(tensors, owning=False) for tensors, _ in groups]
    per_backend[backend] = _Entry(fingerprint, types, plans)


def clear() -> None:
    """Forget every cached plan (tests, or to release the small per-module bookkeeping)."""
    _entries.clear()
