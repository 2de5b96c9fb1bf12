"""``wgan-ext train`` on several processes: ``torchrun --nproc-per-node N -m wgan_ext train ...``
(or ``wgan-ext train --nproc N``, which launches the same workers through torch's elastic agent).

Every process builds the same networks from the same seed; then:

* **m is the global batch.** ``--batch-size`` is Algorithm 1's m. Of every batch a single
  process would draw, rank r of W takes rows ``r*m/W .. (r+1)*m/W`` and draws m/W noise
  vectors; DDP (and FSDP2 for the critic with ``--fsdp``) average the gradients over the ranks,
  so each update follows the gradient of the mean over m samples, as in one process (up to the
  order of float sums). W must divide m.
* **Random streams.** Initial weights come from the seed on every rank (DDP also broadcasts
  rank 0's). After that rank 0 continues the single-process stream and rank r >= 1 draws its
  noise from a stream of its own, seeded by ``(seed, r)``. Real batches never use these streams.
* **Lockstep.** Every rank runs the same collectives in the same order: wrapping, each update,
  and at the end of a period the full-state gather (FSDP) and one broadcast of rank 0's outcome.
  Ctrl-C (SIGINT to the workers; torchrun forwards it) is agreed on once per generator
  iteration, so all ranks stop after the same update and save one checkpoint.
* **Rank 0 alone writes** the run folder (samples, plots, metrics, TensorBoard, checkpoint,
  summary) and evaluates, on plain copies of the networks. Errors in its setup or writing
  reach every rank, so all stop with the same exit code.
* **Checkpoints** hold full (unsharded) models with single-process keys, plus each rank's RNG
  states and period sums (``ranks``); a resumed run must have the same number of processes and
  continues exactly as the uninterrupted one on the same machine (same thread count).
* **Not the same as one process:** other noise (per-rank streams) and float sums in another
  order; batch norm (``--arch dcgan`` with clip or hinge) normalises over each rank's m/W
  samples. ``--fsdp`` cannot train ``--loss gp`` (double backward).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import pickle
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

import torch

from . import data as D
from .train_config import TrainError

if TYPE_CHECKING:
    from .train_report import PeriodStats

__all__ = [
    "World", "join", "launched", "launch", "wrap_network", "ShardedBatchStream", "batch_stream",
    "seed_rank", "eval_models", "model_states", "load_model_states", "period_means", "check_devices",
    "gloo_available",
]

T = TypeVar("T")
_RANK_SEED_TAG = 0xD157  # keeps rank r's stream apart from the data streams' seeds


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def launched() -> bool:
    """Started by torchrun (or the elastic agent of ``--nproc``): its environment is set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class World:
    """This process's place in a run. The default is one process, no process group.

    Attributes:
        rank, world_size, local_rank, local_world_size: as torchrun sets them.
        distributed: a process group is in use (collectives run).
        owns_group: :func:`join` created the process group (and :meth:`close` destroys it).
        fsdp: the critic is sharded with FSDP2 (set from the run's config).
        shadows: rank 0's unsharded copies of sharded networks, for evaluation.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    distributed: bool = False
    owns_group: bool = False
    fsdp: bool = False
    shadows: Dict[str, torch.nn.Module] = field(default_factory=dict)
    _mesh: Any = None

    @property
    def writer(self) -> bool:
        """This process writes the run folder (rank 0)."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if :func:`join` created it."""
        self.shadows.clear()
        if self.owns_group and _dist().is_initialized():
            # Wrapped networks of a finished run hold the group; freed at exit instead, its
            # threads can abort the process ("terminate called without an active exception").
            gc.collect()
            _dist().destroy_process_group()
        self.owns_group = False

    def device(self, name: str) -> torch.device:
        """The device this rank trains on: ``--device cuda`` is ``cuda:LOCAL_RANK`` under torchrun."""
        dev = torch.device(name)
        if self.distributed and dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def mesh(self, device: torch.device) -> Any:
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(device.type, (self.world_size,))
        return self._mesh

    # -- agreement between ranks --------------------------------------------------------------
    def share(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0; every rank gets its result, or raises its exception."""
        if not self.distributed:
            return fn()
        box: List[Any] = [None]
        error: Optional[BaseException] = None
        if self.rank == 0:
            try:
                box[0] = (True, fn())
            except Exception as e:
                error = e
                box[0] = (False, _portable(e))
        _dist().broadcast_object_list(box, src=0)
        ok, value = box[0]
        if error is not None:
            raise error
        if not ok:
            raise value
        return value

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on every rank; if it raised on any, every rank raises the first one."""
        if not self.distributed:
            return fn()
        try:
            result, error = fn(), None
        except Exception as e:
            result, error = None, e
        outcomes = self.gather(None if error is None else _portable(error))
        if error is not None:
            raise error
        for e in outcomes:
            if e is not None:
                raise e
        return result  # type: ignore[return-value]

    def gather(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        _dist().all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
        return bool(t.item())


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (to send it to the other ranks), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def join() -> World:
    """This process's :class:`World`: an existing process group, else one created from torchrun's
    environment (gloo for CPU tensors, plus nccl for CUDA ones where available), else one process.

    Raises:
        TrainError: launched by torchrun, but this torch has no torch.distributed.
    """
    env = os.environ
    if not launched() and not (gloo_available() and _dist().is_initialized()):
        return World()
    if not gloo_available():
        raise TrainError("launched by torchrun, but this torch has no torch.distributed (gloo)")
    dist = _dist()
    owns = False
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available() and dist.is_nccl_available():
            backend = "cpu:gloo,cuda:nccl"  # the device of a resumed run is only known later
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as e:  # e.g. RANK/WORLD_SIZE set without MASTER_ADDR/PORT
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainError(f"RANK and WORLD_SIZE are set, as torchrun sets them, but the process group did "
                             f"not start: {first}") from None
        owns = True
    rank, size = dist.get_rank(), dist.get_world_size()
    return World(rank=rank, world_size=size, local_rank=int(env.get("LOCAL_RANK", rank)),
                 local_world_size=int(env.get("LOCAL_WORLD_SIZE", size)), distributed=True, owns_group=owns)


def gloo_available() -> bool:
    """This torch has torch.distributed with the gloo backend."""
    dist = _dist()
    return dist.is_available() and dist.is_gloo_available()


def check_devices(device: str, local_world_size: int) -> None:
    """Refuse a device that cannot hold ``local_world_size`` processes of one node.

    Raises:
        TrainError: ``cuda:N`` (each process takes ``cuda:LOCAL_RANK``), fewer GPUs than
            processes, or ``mps``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise TrainError(f"device {device!r}: with torch.distributed each process uses cuda:LOCAL_RANK; "
                             "pass --device cuda")
        count = torch.cuda.device_count()
        if local_world_size > count:
            raise TrainError(f"device 'cuda': {local_world_size} processes on this machine but only {count} "
                             "CUDA device(s)")
    elif dev.type == "mps":
        raise TrainError(f"device {device!r} cannot train with torch.distributed; use cpu or cuda")


def check_fsdp() -> None:
    """Raises :class:`TrainError` if this torch has no FSDP2."""
    try:
        from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise TrainError("--fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard), which this torch lacks") from None


# ----------------------------------------------------------------------------- the networks


def _ddp_class() -> type:
    from torch.nn.parallel import DistributedDataParallel

    class WrappedDDP(DistributedDataParallel):
        """DDP that also answers the wrapped model's attributes: torchgan's losses read
        ``encoding_dims`` and ``label_type`` from the Trainer's ``generator`` / ``discriminator``."""

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name == "module":
                    raise
                return getattr(self.module, name)

    return WrappedDDP


def wrap_network(network: Dict[str, Dict[str, Any]], world: World, device: torch.device) -> Dict[str, Dict[str, Any]]:
    """The torchgan network dict with each model wrapped as it is built: DDP, or for the critic
    with ``world.fsdp`` FSDP2's ``fully_shard`` over all ranks. torchgan's Trainer builds the
    optimizers from the wrapped models, so they hold the sharded parameters."""
    ddp = _ddp_class()
    wrapped = {}
    for name, spec in network.items():
        build: Callable[..., torch.nn.Module] = spec["name"]

        def factory(*args: Any, _build: Callable[..., torch.nn.Module] = build, _name: str = name,
                    **kwargs: Any) -> torch.nn.Module:
            model = _build(*args, **kwargs).to(device)
            if world.fsdp and _name == "discriminator":
                from torch.distributed.fsdp import fully_shard

                # The critics end in a reshape (a view); the losses never modify it in place.
                warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
                if world.writer:
                    world.shadows[_name] = copy.deepcopy(model)
                fully_shard(model, mesh=world.mesh(device))
                return model
            return ddp(model, device_ids=[device.index] if device.type == "cuda" else None)

        wrapped[name] = {**spec, "name": factory}
    return wrapped


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _sharded(world: World, name: str) -> bool:
    return world.fsdp and name == "discriminator"


def _full_model_state(model: torch.nn.Module) -> Dict[str, Any]:
    """The full state dict of an FSDP2 module on rank 0 (CPU tensors; empty on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def eval_models(trainer: Any, world: World) -> Tuple[Optional[torch.nn.Module], Optional[torch.nn.Module]]:
    """(generator, critic) as plain modules to evaluate on rank 0; ``(None, None)`` elsewhere.
    A sharded critic is gathered into rank 0's unsharded copy (a collective: call on all ranks)."""
    if not world.distributed:
        return trainer.generator, trainer.discriminator
    models = []
    for name in ("generator", "discriminator"):
        model = getattr(trainer, name)
        if _sharded(world, name):
            state = _full_model_state(model)
            if world.writer:
                world.shadows[name].load_state_dict(state)
                model = world.shadows[name]
        models.append(_plain(model) if world.writer else None)
    return models[0], models[1]


def plain_generator(trainer: Any) -> torch.nn.Module:
    """The generator as a plain module (never sharded; DDP's replicas are equal), without a
    collective: rank 0 may score it alone."""
    return _plain(trainer.generator)


def model_states(trainer: Any, world: World) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(models, optimizers) state dicts for the checkpoint, with the keys a single process has
    (sharded ones gathered to full tensors: a collective, call on all ranks; complete on rank 0)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    models, optimizers = {}, {}
    for name, opt_name in zip(trainer.model_names, trainer.optimizer_names):
        model, opt = getattr(trainer, name), getattr(trainer, opt_name)
        if _sharded(world, name):
            models[name] = _full_model_state(model)
            optimizers[opt_name] = get_optimizer_state_dict(
                model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            models[name] = _plain(model).state_dict()
            optimizers[opt_name] = opt.state_dict()
    return models, optimizers


def load_model_states(trainer: Any, world: World, models: Dict[str, Any], optimizers: Dict[str, Any]) -> None:
    """Load :func:`model_states`' dicts on every rank (each rank holds the full ones)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    full = StateDictOptions(full_state_dict=True)
    for name, opt_name in zip(trainer.model_names, trainer.optimizer_names):
        model, opt = getattr(trainer, name), getattr(trainer, opt_name)
        if _sharded(world, name):
            set_model_state_dict(model, models[name], options=full)
            set_optimizer_state_dict(model, opt, optim_state_dict=optimizers[opt_name], options=full)
        else:
            _plain(model).load_state_dict(models[name])
            opt.load_state_dict(optimizers[opt_name])


# ----------------------------------------------------------------------------- data and randomness


class ShardedBatchStream(D.BatchStream):
    """A :class:`~wgan_ext.data.BatchStream` of this rank's rows of each global batch.

    :attr:`batch_size` (read by torchgan's Trainer, which draws that many noise vectors) is the
    per-rank share m/W; :attr:`global_batch` is m; :attr:`position` counts global batches.
    """

    def __init__(self, source: D.DataSource, global_batch: int, seed: int, rank: int, world_size: int) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not a multiple of {world_size} processes")
        super().__init__(source, global_batch, seed)
        self.batch_size = global_batch // world_size
        self.rows = slice(rank * self.batch_size, (rank + 1) * self.batch_size)

    def _draw(self) -> torch.Tensor:
        return self.source.batch_rows(self.position, self.global_batch, self.seed, self.rows)


def batch_stream(source: D.DataSource, batch_size: int, seed: int, world: World) -> D.BatchStream:
    """The run's data stream: this rank's share of each batch of ``batch_size`` (= m)."""
    if world.world_size == 1:
        return D.BatchStream(source, batch_size, seed)
    return ShardedBatchStream(source, batch_size, seed, world.rank, world.world_size)


def seed_rank(seed: int, world: World) -> None:
    """Give rank r >= 1 a noise stream of its own (rank 0 keeps the single-process stream)."""
    if world.rank > 0:
        torch.manual_seed(D._mix_seed(seed, _RANK_SEED_TAG, world.rank))


def period_means(stats: "PeriodStats", world: World) -> "PeriodStats":
    """The period's sums over the global batches (read its ``critic_w`` / ``gen_loss``): each rank's
    values are means over its m/W samples, so the global sums are their mean over ranks (every rank
    counts the same updates). ``stats`` itself on one process; a collective on several."""
    if not world.distributed:
        return stats
    sums = world.gather((stats.w_sum, stats.g_sum))
    return dataclasses.replace(stats, w_sum=sum(s[0] for s in sums) / len(sums),
                               g_sum=sum(s[1] for s in sums) / len(sums))


# ----------------------------------------------------------------------------- --nproc


def launch(nproc: int, argv: List[str]) -> int:
    """Run ``python -m wgan_ext train ARGV`` on ``nproc`` local processes through torch's elastic
    agent (as ``torchrun --standalone --nproc-per-node NPROC`` would); the exit code of the run.

    Workers print their own output (rank 0 reports, and states any error in one line); this
    returns rank 0's exit code if it failed, else the first failing worker's (1 when killed by
    a signal), 130 when interrupted by Ctrl-C, 0 when all succeeded.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: one intra-op thread per worker unless told
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    # The agent's log lines (stopping workers, their exit codes) repeat what rank 0 has said.
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed.elastic")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "wgan_ext", "train", *argv)
    except ChildFailedError as e:
        failures = dict(e.failures)
        failed = failures.get(0) or failures[min(failures)]
        return failed.exitcode if failed.exitcode > 0 else 1
    except (SignalException, KeyboardInterrupt):
        return 130
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
    return 0
