"""``ClippedRMSprop``: RMSprop and the WGAN weight clip in one pass per critic update.

Algorithm 1 of the WGAN paper updates the critic with RMSProp and then clamps every critic
weight to ``[-c, c]``, ``n_critic`` times per generator step. ``torch.optim.RMSprop`` reads and
writes each parameter and its state in several passes (one per ATen op) and the clip is one more;
:class:`ClippedRMSprop` does both in one pass per tensor: a compiled op
(``torch.ops.wgan_ext.rmsprop_clip_``, CPU and CUDA kernels) or, where no kernel serves the
device, ``torch.optim.RMSprop``'s own functional step followed by :func:`wgan_ext.fused_clip_`.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_scalar_dtype
from torch.optim.rmsprop import rmsprop as _rmsprop_step

from . import _ext
from .distributed import PLAIN_TYPES, local_tensor
from .ops import SUPPORTED_DTYPES, Bounds, fused_clip_, resolve_bounds

__all__ = ["ClippedRMSprop", "rmsprop_clip_", "kernel_available"]

# device type -> whether the compiled op serves it; filled outside torch.compile (tracing only
# reads it: it never loads or builds anything).
_KERNELS: dict = {}
_lock = threading.Lock()


def kernel_available(device_type: str, warn: bool = False) -> bool:
    """True if the compiled ``rmsprop_clip_`` serves ``device_type`` ('cpu' or 'cuda').

    Loads (or builds) the kernel library on first use, as :func:`wgan_ext.fused_clip_` does;
    with ``warn``, says once why the kernel is unavailable.
    """
    ok = _KERNELS.get(device_type)
    if ok is not None:
        return ok
    with _lock:
        ok = _KERNELS.get(device_type)
        if ok is not None:
            return ok
        ok = device_type in ("cpu", "cuda") and _ext.available(device_type, warn=warn)
        if ok and not _ext._has_kernels(device_type.upper()):
            ok = False
            if warn:  # a library built before the op existed
                warnings.warn(f"wgan_ext: the loaded {device_type.upper()} kernel library has no "
                              "rmsprop_clip_ (a stale build?); ClippedRMSprop uses torch's RMSprop "
                              "and fused_clip_ (same results, slower)", RuntimeWarning, stacklevel=3)
        _KERNELS[device_type] = ok
        return ok


def _use_kernel(device: torch.device, fused: Optional[bool]) -> bool:
    if fused is False:
        return False
    if torch.compiler.is_compiling():
        ok = _KERNELS.get(device.type, False)
    else:
        ok = kernel_available(device.type, warn=fused is None)
    if fused and not ok:
        if device.type not in ("cpu", "cuda"):
            why = "kernels exist for cpu and cuda only"
        else:
            why = _ext.status(device.type).reason or "the loaded library has no rmsprop_clip_"
        raise RuntimeError(f"ClippedRMSprop(fused=True): no compiled rmsprop_clip_ kernel serves "
                           f"device {device} ({why})")
    return ok


def rmsprop_clip_(params: list, grads: list, square_avgs: list, grad_avgs: list,
                  momentum_buffers: list, state_steps: list, clip_only: list, *,
                  lr: Union[float, Tensor], alpha: float, eps: float, weight_decay: float,
                  momentum: float, centered: bool, maximize: bool, lo: float, hi: float,
                  capturable: bool = False, foreach: Optional[bool] = None,
                  fused: Optional[bool] = None) -> None:
    """One RMSprop step of ``params`` (lists as ``torch.optim.rmsprop.rmsprop`` takes them),
    then every tensor of ``params`` and ``clip_only`` clamped in place to ``[lo, hi]``.

    ``grad_avgs`` is empty unless ``centered``; ``momentum_buffers`` is empty unless
    ``momentum > 0``. Per device: the compiled op when it serves the device (``fused`` None or
    True; True makes its absence an error), else ``torch.optim.rmsprop.rmsprop`` (``foreach``
    as there) followed by :func:`wgan_ext.fused_clip_`.
    """
    devices = {t.device for t in params} | {t.device for t in clip_only}
    if len(devices) > 1:  # one call per device
        for device in devices:
            keep = [i for i, p in enumerate(params) if p.device == device]
            pick = lambda lst: [lst[i] for i in keep] if lst else []  # noqa: E731
            rmsprop_clip_(pick(params), pick(grads), pick(square_avgs), pick(grad_avgs),
                          pick(momentum_buffers), pick(state_steps),
                          [t for t in clip_only if t.device == device], lr=lr, alpha=alpha,
                          eps=eps, weight_decay=weight_decay, momentum=momentum,
                          centered=centered, maximize=maximize, lo=lo, hi=hi,
                          capturable=capturable, foreach=foreach, fused=fused)
        return
    if not devices:
        return
    if _use_kernel(next(iter(devices)), fused):
        if any(type(t) not in PLAIN_TYPES for t in (*params, *clip_only)):
            # DTensor parameters (FSDP2): the update is elementwise, so each rank steps its local
            # shards of parameters, gradients and state (the op checks that their shapes agree).
            params, grads, square_avgs, grad_avgs, momentum_buffers, clip_only = (
                [local_tensor(t) for t in lst]
                for lst in (params, grads, square_avgs, grad_avgs, momentum_buffers, clip_only))
        lr_tensor = lr if isinstance(lr, Tensor) else None
        torch.ops.wgan_ext.rmsprop_clip_(
            params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, clip_only,
            lr_tensor, 0.0 if lr_tensor is not None else float(lr), alpha, eps, weight_decay,
            momentum, centered, maximize, lo, hi)
        return
    if params:
        _rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps,
                      foreach=foreach, maximize=maximize, differentiable=False,
                      capturable=capturable, has_complex=False, lr=lr, alpha=alpha, eps=eps,
                      weight_decay=weight_decay, momentum=momentum, centered=centered)
    fused_clip_(list(params) + list(clip_only), (lo, hi))


def _check_hyper(lr: Any, alpha: float, eps: float, weight_decay: float, momentum: float) -> None:
    # The checks and messages of torch.optim.RMSprop.
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= momentum:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not 0.0 <= alpha:
        raise ValueError(f"Invalid alpha value: {alpha}")


class ClippedRMSprop(Optimizer):
    r"""RMSprop followed by a clamp of every parameter: the critic update of WGAN's Algorithm 1.

    ``step()`` computes exactly ``torch.optim.RMSprop(params, ...).step()`` and then clamps every
    parameter of the optimizer, with or without a gradient, to ``[lo, hi]``; on the CPU and on
    CUDA both happen in one fused kernel per device, one pass over each tensor. For a parameter
    :math:`\theta` with gradient :math:`g` (negated if ``maximize``):

    .. math::
        g &\leftarrow g + \lambda\theta \\
        v &\leftarrow \alpha v + (1 - \alpha) g^2 \\
        \bar g &\leftarrow \alpha \bar g + (1 - \alpha) g \quad
            \tilde v \leftarrow v - \bar g^2 \quad \text{(centered; else } \tilde v = v) \\
        b &\leftarrow \mu b + g / (\sqrt{\tilde v} + \epsilon) \quad
            \theta \leftarrow \theta - \gamma b \quad
            \text{(momentum; else } \theta \leftarrow \theta - \gamma g / (\sqrt{\tilde v} + \epsilon)) \\
        \theta &\leftarrow \min(\max(\theta, lo), hi)

    Numerics: on the CPU the results are those of ``RMSprop(foreach=False)`` followed by
    ``clamp_``, bit for bit, for float32, float64, bfloat16 and float16 (NaN payloads aside):
    the kernel repeats ATen's roundings op by op, fuses a multiply-add exactly where ATen's
    AVX2/AVX-512 kernels do (none under ``ATEN_CPU_CAPABILITY=default``), takes ATen's own
    square root (MKL's, which is not always correctly rounded) and, for 16-bit weight decay and
    momentum, rounds the scalar tails of ATen's per-thread loops as they do. On CUDA the kernel
    computes the same sequence of roundings; ATen's CUDA kernels fuse multiply-adds where nvcc
    chooses, so there the tests bound the difference from ``RMSprop`` + ``clamp_`` per step by 4
    units in the last place in float32/float64 and 2 in float16/bfloat16. The
    fallback (``fused=False``) runs RMSprop's own step and is exact everywhere.

    ``state_dict()`` has ``torch.optim.RMSprop``'s layout (``step``, ``square_avg``,
    ``momentum_buffer``, ``grad_avg``), so a state dict loads either way; the param groups
    carry RMSprop's hyperparameters plus ``clip`` and ``fused``.

    Args:
        params: parameters or param groups (a group may set its own ``clip``).
        lr: learning rate :math:`\gamma` (float or 1-element tensor; default 5e-5, the paper's).
        alpha: smoothing constant :math:`\alpha` (default 0.99).
        eps: :math:`\epsilon`, added to the root (default 1e-8).
        weight_decay: L2 penalty :math:`\lambda` (default 0).
        momentum: momentum factor :math:`\mu` (default 0).
        centered: centered RMSprop (default False).
        clip: ``c`` for ``[-c, c]`` (``c > 0``, default 0.01, the paper's) or a ``(lo, hi)`` pair.
        capturable: keep ``step`` on the parameters' device, for CUDA graphs (as RMSprop's).
        foreach: the fallback's RMSprop implementation (as RMSprop's ``foreach``).
        maximize: maximize the objective (default False).
        differentiable: accepted for RMSprop's signature; only False is supported.
        fused: None (default) uses the compiled kernel where one serves the device and falls
            back (with a one-time warning saying why) elsewhere; True requires the kernel;
            False always runs ``torch.optim.RMSprop``'s step then :func:`wgan_ext.fused_clip_`.

    Raises:
        ValueError: ``lr``, ``alpha``, ``eps``, ``weight_decay`` or ``momentum`` below 0,
            ``clip <= 0``, a non-finite clip or ``lo > hi``, a parameter listed twice,
            ``differentiable=True``.
        TypeError: a clip that is not a number or pair, a parameter of an unsupported dtype.

    Example:
        >>> critic = torch.nn.Linear(4, 1)
        >>> opt = ClippedRMSprop(critic.parameters(), lr=5e-5, clip=0.01)
        >>> critic(torch.randn(8, 4)).mean().backward()
        >>> opt.step()
        >>> opt.bounds
        [(-0.01, 0.01)]
        >>> bool(critic.weight.abs().max() <= 0.01)
        True
    """

    def __init__(self, params: Iterable, lr: Union[float, Tensor] = 5e-5, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, clip: Bounds = 0.01, capturable: bool = False,
                 foreach: Optional[bool] = None, maximize: bool = False,
                 differentiable: bool = False, fused: Optional[bool] = None) -> None:
        _check_hyper(lr, alpha, eps, weight_decay, momentum)
        if differentiable:
            raise ValueError("ClippedRMSprop does not support differentiable=True (the clip is a "
                             "projection, not part of any graph)")
        resolve_bounds(clip, "clip")
        if fused not in (None, True, False):
            raise TypeError(f"fused must be None, True or False, got {fused!r}")
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot be `True` together.")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=False, clip=clip, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:  # load the kernels now, outside any torch.compile
            for p in group["params"]:
                if group["fused"] is not False:
                    _use_kernel(p.device, group["fused"])

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (checked first: a bad group is not added)."""
        group = {**self.defaults, **param_group}
        _check_hyper(group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                     group["momentum"])
        resolve_bounds(group["clip"], "clip")
        params = param_group["params"]
        if isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but "
                            "the ordering of tensors in sets will change between runs. Please use a list instead.")
        params = [params] if isinstance(params, Tensor) else list(params)
        seen: set = set()
        for p in params:
            if isinstance(p, Tensor) and p.dtype not in SUPPORTED_DTYPES:
                raise TypeError(f"ClippedRMSprop: a parameter has dtype {p.dtype}; supported: "
                                f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
            if id(p) in seen:
                raise ValueError("ClippedRMSprop: a parameter appears twice in one param group")
            seen.add(id(p))
        super().add_param_group({**param_group, "params": params})

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as RMSprop's, plus this optimizer's keys
            group.setdefault("momentum", 0)
            group.setdefault("centered", False)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)
            group.setdefault("fused", None)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    step = float(p_state["step"])
                    p_state["step"] = torch.tensor(
                        step, dtype=_get_scalar_dtype(),
                        device=p.device if group["capturable"] else None)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a ``ClippedRMSprop`` or ``torch.optim.RMSprop`` state dict. A group saved
        without ``clip`` (RMSprop's) keeps this optimizer's ``clip`` for that group."""
        clips = [g["clip"] for g in self.param_groups]
        fused = [g["fused"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, clip, f in zip(self.param_groups, clips, fused):
            group.setdefault("clip", clip)
            if group.get("fused") is None and f is not None:
                group["fused"] = f

    @property
    def bounds(self) -> list:
        """``(lo, hi)`` per param group, in order: what ``step()`` clamps each group's
        parameters to."""
        return [resolve_bounds(g["clip"], "clip") for g in self.param_groups]

    def bounds_for(self, params: Iterable[Tensor]) -> Optional[tuple]:
        """The ``(lo, hi)`` that ``step()`` clamps every tensor of ``params`` to, or None if a
        tensor is not a parameter of this optimizer or the groups holding them disagree.

        For callers that would clip after the step (a critic loss): a result equal to their
        bounds means the clip is already done."""
        where = {}
        for g in self.param_groups:
            bounds = resolve_bounds(g["clip"], "clip")  # once per group, not per parameter
            where.update(dict.fromkeys(map(id, g["params"]), bounds))
        found = {where.get(id(p)) for p in params}
        return found.pop() if len(found) == 1 and None not in found else None

    def _init_group(self, group: dict, params: list, grads: list, square_avgs: list,
                    momentum_buffers: list, grad_avgs: list, state_steps: list,
                    clip_only: list) -> None:
        """Collect the lists of one group (as RMSprop's ``_init_group``, plus the parameters
        without a gradient, which are only clipped); create missing state."""
        for p in group["params"]:
            if p.grad is None:
                clip_only.append(p)
                continue
            if p.grad.is_sparse:
                raise RuntimeError("ClippedRMSprop does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = (torch.zeros((), dtype=_get_scalar_dtype(), device=p.device)
                                 if group["capturable"]
                                 else torch.zeros((), dtype=_get_scalar_dtype()))
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["momentum"] > 0:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum_buffers.append(state["momentum_buffer"])
            if group["centered"]:
                if "grad_avg" not in state:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grad_avgs.append(state["grad_avg"])
            square_avgs.append(state["square_avg"])
            state_steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One RMSprop step, then every parameter clamped to its group's bounds.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled).
        """
        check = getattr(self, "_accelerator_graph_capture_health_check", None) or \
            getattr(self, "_cuda_graph_capture_health_check")
        check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["differentiable"]:
                raise RuntimeError("ClippedRMSprop does not support differentiable=True")
            lo, hi = resolve_bounds(group["clip"], "clip")
            params: list = []
            grads: list = []
            square_avgs: list = []
            grad_avgs: list = []
            momentum_buffers: list = []
            state_steps: list = []
            clip_only: list = []
            self._init_group(group, params, grads, square_avgs, momentum_buffers, grad_avgs,
                             state_steps, clip_only)
            rmsprop_clip_(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps,
                          clip_only, lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                          weight_decay=group["weight_decay"], momentum=group["momentum"],
                          centered=group["centered"], maximize=group["maximize"], lo=lo, hi=hi,
                          capturable=group["capturable"], foreach=group["foreach"],
                          fused=group["fused"])
        return loss
