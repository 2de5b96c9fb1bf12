"""``ClippedRMSprop``: RMSprop and the WGAN weight clip in one pass per critic update.

Algorithm 1 of the WGAN paper updates the critic with RMSProp and then clamps every critic
weight to ``[-c, c]``, ``n_critic`` times per generator step. ``torch.optim.RMSprop`` reads and
writes each parameter and its state in several passes (one per ATen op) and the clip is one more;
:class:`ClippedRMSprop` does both in one pass per tensor with the compiled op
``torch.ops.wgan_ext.rmsprop_clip_`` or, where no kernel serves the device, runs
``torch.optim.RMSprop``'s own functional step followed by :func:`wgan_ext.fused_clip_`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _get_capturable_supported_devices, _use_grad_for_differentiable
from torch.optim.rmsprop import RMSprop, rmsprop

from . import _ext
from .distributed import PLAIN_TYPES, local_tensor
from .ops import SUPPORTED_DTYPES, Bounds, fused_clip_, resolve_bounds

__all__ = ["ClippedRMSprop", "kernel_available"]

# Parameter dtypes: the clip's, and complex ones (RMSprop's step; clipped as real/imaginary pairs).
_DTYPES = (*SUPPORTED_DTYPES, torch.complex64, torch.complex128)

def kernel_available(device_type: str, warn: bool = False) -> bool:
    """True if the compiled ``rmsprop_clip_`` serves ``device_type`` ('cpu' or 'cuda').

    Loads (or builds) the kernel library on first use, as :func:`wgan_ext.fused_clip_` does;
    with ``warn``, says once why the kernel is unavailable. Under ``torch.compile`` it only
    reads what is loaded: tracing never builds anything.
    """
    if device_type not in ("cpu", "cuda"):
        return False
    if torch.compiler.is_compiling():
        return _ext.is_loaded(device_type)
    return _ext.available(device_type, warn=warn)


def _use_kernel(device: torch.device, fused: Optional[bool]) -> bool:
    if fused is False:
        return False
    ok = kernel_available(device.type, warn=fused is None)
    if fused and not ok:
        if device.type not in ("cpu", "cuda"):
            why = "kernels exist for cpu and cuda only"
        else:
            why = _ext.status(device.type).reason
        raise RuntimeError(f"ClippedRMSprop(fused=True): no compiled rmsprop_clip_ kernel serves "
                           f"device {device} ({why})")
    return ok


def _check_group(group: dict) -> tuple:
    """Everything about one param group that could stop ``step()``, checked before anything is
    written; returns the group's ``(lo, hi)``."""
    lo, hi = resolve_bounds(group["clip"], "clip")
    fused = group["fused"]
    if not (fused is None or isinstance(fused, bool)):
        raise TypeError(f"fused must be None, True or False, got {fused!r}")
    if fused and group["foreach"]:
        raise ValueError("`fused` and `foreach` cannot be `True` together.")
    if fused and group["differentiable"]:
        raise ValueError("`fused` does not support `differentiable`")
    lr = group["lr"]
    if isinstance(lr, Tensor) and lr.is_meta:
        raise RuntimeError("ClippedRMSprop: lr is a tensor on the meta device, which holds no value")
    params = group["params"]
    for dtype in {p.dtype for p in params}:
        if dtype not in _DTYPES:
            raise TypeError(f"ClippedRMSprop: a parameter has dtype {dtype}; supported: "
                            f"{', '.join(str(d) for d in _DTYPES)}")
        limit = torch.finfo(dtype.to_real()).max
        if abs(lo) > limit or abs(hi) > limit:  # clamp_ raises for a bound its dtype cannot hold
            raise ValueError(f"clip={group['clip']!r} does not fit a parameter of dtype {dtype} "
                             f"(largest finite value {limit:g})")
    if fused:
        for device in {p.device for p in params}:
            _use_kernel(device, True)
    return lo, hi


def _real(tensors: list) -> list:
    """Complex tensors as their real views (each real and imaginary part one number)."""
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


class ClippedRMSprop(RMSprop):
    r"""``torch.optim.RMSprop`` followed by a clamp of every parameter: WGAN's critic update.

    ``step()`` is ``RMSprop.step()`` and then every parameter of each param group, with or
    without a gradient, clamped to the group's ``[lo, hi]`` (complex parameters: their real and
    imaginary parts). On the CPU and on CUDA both happen in one compiled kernel per device and
    dtype, one pass over each tensor. For a parameter :math:`\theta` with gradient :math:`g`
    (negated if ``maximize``):

    .. math::
        g &\leftarrow g + \lambda\theta \\
        v &\leftarrow \alpha v + (1 - \alpha) g^2 \\
        \bar g &\leftarrow \alpha \bar g + (1 - \alpha) g \quad
            \tilde v \leftarrow v - \bar g^2 \quad \text{(centered; else } \tilde v = v) \\
        b &\leftarrow \mu b + g / (\sqrt{\tilde v} + \epsilon) \quad
            \theta \leftarrow \theta - \gamma b \quad
            \text{(momentum; else } \theta \leftarrow \theta - \gamma g / (\sqrt{\tilde v} + \epsilon)) \\
        \theta &\leftarrow \min(\max(\theta, lo), hi)

    Everything else is ``RMSprop``'s: argument checks, ``state_dict`` layout (``step``,
    ``square_avg``, ``momentum_buffer``, ``grad_avg``; a state dict loads either way), hooks,
    schedulers, closures, ``foreach``, ``capturable``, ``differentiable`` (RMSprop's
    differentiable step, then ``clamp_``, which autograd differentiates), a parameter listed
    twice (a warning). Param groups carry RMSprop's keys plus ``clip`` and ``fused``.

    Numerics: bit for bit ``RMSprop`` + ``clamp_`` wherever RMSprop's own step runs:
    ``fused=False``, ``differentiable=True``, complex parameters, devices without a kernel, a
    group listing a parameter twice or holding step counts on another device (``foreach`` as
    given). The compiled kernel is held to a bound instead, tested against
    ``RMSprop(foreach=False)`` + ``clamp_`` from the same state: per step within 8 units in the
    last place of the update's largest operand in float32/float64 (measured: at most 6.5; the
    kernel rounds once per stored value, RMSprop once per op), and 2 in float16/bfloat16 against either that reference or
    the same computed in float32 and rounded (RMSprop rounds every op to the 16-bit type); over
    300 steps of a WGAN critic within ``rtol=1e-5`` in float32.

    Args:
        params: parameters or param groups (a group may set its own ``clip`` and ``fused``).
        lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, maximize,
            differentiable: as for ``torch.optim.RMSprop`` (``lr`` defaults to 5e-5, the
            paper's; ``foreach`` applies where RMSprop's step runs).
        clip: ``c`` for ``[-c, c]`` (``c > 0``, default 0.01, the paper's) or a ``(lo, hi)``
            pair; finite, and within the range of every parameter's dtype.
        fused: None (default) uses the compiled kernel where one serves the device and
            RMSprop's step plus :func:`wgan_ext.fused_clip_` elsewhere (warning once why);
            True requires the kernel for every parameter's device; False never uses it.

    Raises:
        ValueError: RMSprop's (``lr``, ``alpha``, ``eps``, ``weight_decay``, ``momentum``
            below 0, ...); ``clip <= 0``, a non-finite clip, ``lo > hi``, a clip beyond a
            parameter's dtype; ``fused=True`` with ``foreach=True`` or ``differentiable=True``.
        TypeError: a clip that is not a number or pair, a parameter of an unsupported dtype,
            a ``fused`` that is not None/True/False.
        RuntimeError: ``fused=True`` and no kernel serves a parameter's device.

    A param group is checked when it is added (nothing is added if it fails), and every group
    again at each ``step()`` before any is written.

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
        # RMSprop.__init__ makes the defaults and adds the groups: these join the defaults first.
        self._more_defaults = {"clip": clip, "fused": fused}
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, capturable=capturable,
                         foreach=foreach, maximize=maximize, differentiable=differentiable)

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group, checked (``clip``, ``fused``, dtypes): a bad group is not added."""
        self.defaults.update(self.__dict__.pop("_more_defaults", {}))
        super().add_param_group(param_group)
        try:
            group = self.param_groups[-1]
            _check_group(group)
            for device in {p.device for p in group["params"]}:  # load kernels outside torch.compile
                _use_kernel(device, group["fused"])
        except Exception:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a ``ClippedRMSprop`` or ``torch.optim.RMSprop`` state dict. A group saved
        without ``clip``/``fused`` (RMSprop's) keeps this optimizer's."""
        own = [(g["clip"], g["fused"]) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (clip, fused) in zip(self.param_groups, own):
            group.setdefault("clip", clip)
            group.setdefault("fused", fused)

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

    @_use_grad_for_differentiable
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One RMSprop step, then every parameter clamped to its group's bounds.

        Every group is checked (and its missing state created) before any is written.

        Args:
            closure: re-evaluates the model and returns the loss (run with grad enabled).
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for group in self.param_groups:
            bounds = _check_group(group)
            params: list = []
            grads: list = []
            square_avgs: list = []
            grad_avgs: list = []
            momentum_buffers: list = []
            steps: list = []
            has_complex = self._init_group(group, params, grads, square_avgs, momentum_buffers,
                                           grad_avgs, steps)
            if group["capturable"] and not torch.compiler.is_compiling():
                supported = _get_capturable_supported_devices()  # RMSprop's check, made early
                if not all(p.device.type == s.device.type and p.device.type in supported
                           for p, s in zip(params, steps)):
                    raise AssertionError("If capturable=True, params and state_steps must be on "
                                         f"supported devices: {supported}.")
            work.append((group, bounds, [params, grads, square_avgs, grad_avgs, momentum_buffers,
                                         steps], has_complex))
        for group, bounds, lists, has_complex in work:
            clip_only = [p for p in group["params"] if p.grad is None]
            # RMSprop's step as it is for what the op cannot take: a parameter listed twice (it
            # is stepped twice), step counts elsewhere than on the CPU or their parameter's device.
            if (group["differentiable"] or len(set(group["params"])) < len(group["params"])
                    or any(s.device != p.device and not s.is_cpu for p, s in zip(lists[0], lists[5]))):
                self._torch_step(group, bounds, lists, has_complex, clip_only)
            else:
                self._fused_step(group, bounds, lists, clip_only)
        return loss

    @staticmethod
    def _torch_step(group: dict, bounds: tuple, lists: list, has_complex: bool,
                    clip_only: list) -> None:
        """``torch.optim.rmsprop.rmsprop`` on ``lists``, then the clamp of its parameters and
        of ``clip_only``."""
        if lists[0]:
            rmsprop(*lists, foreach=group["foreach"], maximize=group["maximize"],
                    differentiable=group["differentiable"], capturable=group["capturable"],
                    has_complex=has_complex, lr=group["lr"], alpha=group["alpha"],
                    eps=group["eps"], weight_decay=group["weight_decay"],
                    momentum=group["momentum"], centered=group["centered"])
        if group["differentiable"]:  # recorded by autograd, as the step's own in-place ops
            for p in _real(lists[0]):
                p.clamp_(*bounds)
            with torch.no_grad():
                for p in _real(clip_only):
                    p.clamp_(*bounds)
        else:
            fused_clip_(_real(lists[0] + clip_only), bounds)

    @staticmethod
    def _fused_step(group: dict, bounds: tuple, lists: list, clip_only: list) -> None:
        """Per device and dtype, the compiled op where it serves, else :meth:`_torch_step`."""
        stepped = Optimizer._group_tensors_by_device_and_dtype(lists) if lists[0] else {}
        clipped = Optimizer._group_tensors_by_device_and_dtype([clip_only]) if clip_only else {}
        lr = group["lr"]
        scalars = [lr] if isinstance(lr, Tensor) else []
        for key in dict.fromkeys([*stepped, *clipped]):  # while compiling, one key: everything
            sub = stepped[key][0] if key in stepped else [[]] * 6
            only = clipped[key][0][0] if key in clipped else []
            devices = {t.device for t in sub[0] + only}
            device = next(iter(devices))
            has_complex = any(t.is_complex() for t in sub[0] + only)
            if (len(devices) == 1 and not has_complex and _use_kernel(device, group["fused"])
                    and all(t.device == device or t.is_cpu for t in scalars)):
                if any(type(t) not in PLAIN_TYPES for t in sub[0] + only):
                    # DTensor parameters (FSDP2): the update is elementwise, so each rank steps
                    # its local shards of parameters, gradients and state.
                    sub = [[local_tensor(t) for t in s] for s in sub[:5]] + [sub[5]]
                    only = [local_tensor(t) for t in only]
                torch.ops.wgan_ext.rmsprop_clip_(
                    *sub, only, lr if scalars else None, 0.0 if scalars else float(lr),
                    group["alpha"], group["eps"], group["weight_decay"], group["momentum"],
                    group["centered"], group["maximize"], *bounds)
            else:  # no kernel for the device, complex numbers, a tensor lr elsewhere: RMSprop's
                ClippedRMSprop._torch_step(group, bounds, list(sub), has_complex, only)
