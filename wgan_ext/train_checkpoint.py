"""``checkpoint.pt`` of a ``wgan-ext train`` run: what it holds, writing it atomically, reading it safely.

A checkpoint holds everything the future of the run depends on: the config, both models and
optimizers, the losses' ``state_dict`` (update counts, last values), torchgan's
``loss_information``, the RNG states (torch, numpy, python) and the loop's own state (data
stream position, period, the period's running sums, the metrics so far). On CPU a run resumed
from it ends with the same parameters, bit for bit, as the uninterrupted run (same machine,
same thread count). It loads with ``weights_only=True``: no code runs on load.

**Integrity.** Beside it, ``checkpoint.pt.sha256`` records the SHA-256 of its bytes (the format
of ``sha256sum``). :func:`load_checkpoint` checks it before ``torch.load`` and then checks what
the file holds (types and ranges of the loop state, RNG state sizes); the optimizer states'
shapes and settings are checked against the run's networks in :func:`restore_training_state`.
A failed check is a :class:`~wgan_ext.train_errors.CheckpointError` (two lines: what, and what to
do). Writing is crash-safe: while ``checkpoint.pt`` is replaced, the record lists the old and
the new digest, so whichever file a crash leaves verifies.

A run on several processes (rank 0 writes it) saves full, unsharded models with the keys of a
single process (an FSDP2 critic's optimizer state is keyed by parameter name), and adds
``ranks``: each rank's RNG states and period sums.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import re
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from . import plots as P
from .train_errors import CheckpointError, TrainError
from .train_eval import PERIOD_SCORES

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint",
    "checkpoint_payload", "restore_training_state", "generator_updates", "rng_state", "set_rng_state",
    "digest_path",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "wgan-ext-run"
CHECKPOINT_VERSION = 2
_NEEDED = ("config", "models", "optimizers", "losses", "loss_information", "rng", "loop")


def rng_state() -> Dict[str, Any]:
    """This process's RNG states (torch, numpy, python, and CUDA's once initialised)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937 key as a tensor so the file loads with weights_only=True
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_payload(config: Dict[str, Any], trainer: Any, critic_loss: Any, gen_loss: Any,
                       loop: Dict[str, Any], *, models: Optional[Dict[str, Any]] = None,
                       optimizers: Optional[Dict[str, Any]] = None,
                       ranks: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The checkpoint of a run now: ``config`` (a plain dict), the training objects' state and
    the loop's own state ``loop`` (plain values and tensors).

    A run on several processes passes the full, unwrapped ``models`` / ``optimizers`` state
    dicts, and ``ranks``: each rank's own loop state (its RNG states and period sums)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "models": models if models is not None else {n: getattr(trainer, n).state_dict() for n in trainer.model_names},
        "optimizers": (optimizers if optimizers is not None
                       else {n: getattr(trainer, n).state_dict() for n in trainer.optimizer_names}),
        "losses": {"critic": critic_loss.state_dict(), "generator": gen_loss.state_dict()},
        "loss_information": dict(trainer.loss_information),
        "rng": rng_state(),
        "loop": loop,
    }
    if ranks is not None:
        payload["ranks"] = ranks
    return payload


def restore_training_state(ck: Dict[str, Any], trainer: Any, critic_loss: Any, gen_loss: Any, *,
                           load_models: Optional[Callable[[Dict[str, Any], Dict[str, Any]], None]] = None,
                           rng: Optional[Dict[str, Any]] = None) -> None:
    """Load models, optimizers, losses, ``loss_information`` and the RNG states from ``ck``.

    ``load_models(models, optimizers)`` replaces loading the trainer's own (wrapped networks);
    ``rng`` replaces ``ck["rng"]`` (one rank's states).

    Raises:
        CheckpointError: the checkpoint's networks, optimizer states or losses do not fit these
            objects (checked before anything is loaded into them, where torch does not check).
    """
    for n in trainer.optimizer_names:
        _check_optimizer_state(n, ck["optimizers"].get(n), getattr(trainer, n))
    try:
        if load_models is not None:
            load_models(ck["models"], ck["optimizers"])
        else:
            for n in trainer.model_names:
                getattr(trainer, n).load_state_dict(ck["models"][n])
            for n in trainer.optimizer_names:
                getattr(trainer, n).load_state_dict(ck["optimizers"][n])
        critic_loss.load_state_dict(ck["losses"]["critic"])
        gen_loss.load_state_dict(ck["losses"]["generator"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _misfit(f"its networks do not fit the run's ({msg[:160]})") from None
    trainer.loss_information = dict(ck["loss_information"])
    set_rng_state(ck["rng"] if rng is None else rng)


def _misfit(what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint does not fit its run: {what}\n"
                           "it was altered after it was written: restore it from a backup, or start a new run")


def _plain_value(v: Any) -> Any:
    return [_plain_value(x) for x in v] if isinstance(v, (list, tuple)) else v


def _check_optimizer_state(name: str, saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """``saved`` (an optimizer ``state_dict``) has ``optimizer``'s settings (lr, clip, betas, ...)
    and, for each parameter, state tensors of that parameter's shape: ``load_state_dict`` checks
    neither, and a wrong one fails (or clips with a bad bound) only in the next step."""
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) \
            or not isinstance(saved.get("state"), dict):
        raise _misfit(f"{name} has no optimizer state")
    live = optimizer.state_dict()["param_groups"]
    if len(saved["param_groups"]) != len(live):
        raise _misfit(f"{name} has {len(saved['param_groups'])} parameter groups, the run's {len(live)}")
    shapes: Dict[Any, torch.Size] = {}
    for group, mine, params in zip(saved["param_groups"], live, (g["params"] for g in optimizer.param_groups)):
        if not isinstance(group, dict):
            raise _misfit(f"{name} has a parameter group that is not a dict")
        for key, want in mine.items():  # a key it lacks keeps the run's value when loaded
            if key != "params" and key in group and _plain_value(group[key]) != _plain_value(want):
                raise _misfit(f"{name}'s {key} is {group.get(key)!r}, the run's config says {want!r}")
        ids = group.get("params")
        if not isinstance(ids, list) or len(ids) != len(params):
            raise _misfit(f"{name} holds another number of parameters than the run's networks")
        shapes.update((i, p.shape) for i, p in zip(ids, params))
    for i, state in saved["state"].items():
        if isinstance(i, str):  # keyed by parameter name (an FSDP2 critic): checked when loaded
            continue
        if i not in shapes or not isinstance(state, dict):
            raise _misfit(f"{name} holds state for a parameter {i!r} the run's networks do not have")
        for key, v in state.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shapes[i]:
                raise _misfit(f"{name}'s {key} of parameter {i} has shape {list(v.shape)}, "
                              f"the parameter {list(shapes[i])}")
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise _misfit(f"{name}'s {key} of parameter {i} holds NaN or inf")


def generator_updates(ck: Dict[str, Any]) -> int:
    """Generator iterations done when ``ck`` was written."""
    try:
        n = ck["losses"]["critic"]["_extra_state"]["counter"]["generator_updates"]
    except (KeyError, TypeError):
        n = None
    if not _is_count(n):
        raise _misfit("no generator update count in its critic loss state")
    return int(n)


def digest_path(path: str) -> str:
    """Where the SHA-256 record of checkpoint ``path`` is kept."""
    return path + ".sha256"


def _recorded_digests(path: str) -> List[str]:
    """The digests recorded for ``path`` (none if there is no record)."""
    try:
        with open(digest_path(path), encoding="ascii", errors="replace") as f:
            return [line.split()[0].lower() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _write_digests(path: str, digests: List[str]) -> None:
    name = os.path.basename(path)
    with P.atomic_path(digest_path(path), suffix=".tmp") as tmp:
        with open(tmp, "w", encoding="ascii") as f:
            f.writelines(f"{d}  {name}\n" for d in digests)
            f.flush()
            os.fsync(f.fileno())


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, ``os.replace``) with its SHA-256
    record beside it. Serialized in memory first, so a full disk is an ``OSError`` from the write
    (not an error inside torch's zip writer), and the previous checkpoint stays as it was."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    old = _recorded_digests(path) if os.path.exists(path) else []
    try:
        _write_digests(path, [digest] + old[:1])  # both verify while the file is being replaced
        with P.atomic_path(path, suffix=".pt") as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _write_digests(path, [digest])
    except OSError as e:  # a failed write() names no file: name the checkpoint
        if e.filename is None:
            e.filename = path
        raise


def _torch_reason(e: Exception) -> str:
    """The gist of torch.load's error in one line: the weights-only unpickler's finding, else the
    first sentence (torch appends paragraphs of advice)."""
    text = " ".join(str(e).split())
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text)
    if found:
        return f"torch.load(weights_only=True): {found.group(1)}"
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _unreadable(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path!r} is unreadable or not a wgan-ext checkpoint\nreason: {reason}")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_rng(state: Any) -> None:
    """``state`` restores into fresh generators (torch, numpy, python): right sizes and types."""
    try:
        torch.Generator().set_state(state["torch"])
        n = state["numpy"]
        np.random.RandomState().set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
        py = state["python"]
        random.Random().setstate((py[0], tuple(py[1]), py[2]))
    except Exception as e:  # wrong size, type or structure: each library raises its own kind
        raise _misfit(f"a random generator state does not restore ({type(e).__name__}: {str(e)[:120]})") from None


def _period_stats_fit(stats: Any) -> bool:
    """A :class:`~wgan_ext.train_report.PeriodStats` state (one from before --score-every has no
    score sums)."""
    base = {"w_sum", "w_n", "g_sum", "g_n"}
    if not (isinstance(stats, dict) and base <= set(stats) <= base | {"score_sums", "score_counts"}
            and _is_count(stats["w_n"]) and _is_count(stats["g_n"])
            and _is_number(stats["w_sum"]) and _is_number(stats["g_sum"])):
        return False
    sums, counts = stats.get("score_sums", {}), stats.get("score_counts", {})
    return (isinstance(sums, dict) and isinstance(counts, dict) and set(sums) == set(counts)
            and all(k in PERIOD_SCORES and _is_number(sums[k]) and _is_count(counts[k]) for k in sums))


def _check_loop(loop: Any) -> None:
    """The loop state's entries have their types and ranges."""
    if not isinstance(loop, dict):
        raise _misfit("its loop state is not a dict")
    for key in ("stream_position", "next_period"):
        if not _is_count(loop.get(key)):
            raise _misfit(f"{key} is {loop.get(key)!r}, not a count >= 0")
    elapsed = loop.get("elapsed")
    if not (_is_number(elapsed) and math.isfinite(elapsed) and elapsed >= 0):
        raise _misfit(f"elapsed is {elapsed!r}, not a time in seconds")
    stats = loop.get("period_stats")
    if not _period_stats_fit(stats):
        raise _misfit(f"period_stats is {stats!r}")
    history = loop.get("history")
    if not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
        raise _misfit("its metrics history is not a list of rows")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Verify, load and check a run checkpoint: its SHA-256 against the record beside it, then
    (``weights_only=True``) its format, version, entries, loop state and RNG states.

    Raises:
        TrainError: no file.
        CheckpointError: no or another SHA-256 record; unreadable or someone else's file
            (message, then the reason on a second line); another format version; entries
            missing or out of range.
    """
    if not os.path.isfile(path):
        raise TrainError(f"no checkpoint at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    recorded = _recorded_digests(path)
    name = os.path.basename(path)
    if not recorded:
        raise CheckpointError(
            f"checkpoint {path!r} has no SHA-256 record beside it ({name}.sha256), so it cannot be verified\n"
            f"if you know the file is intact, record it (in its folder): sha256sum {name} > {name}.sha256")
    if hashlib.sha256(data).hexdigest() not in recorded:
        raise CheckpointError(
            f"checkpoint {path!r} is corrupted: its SHA-256 differs from the one recorded when it was written\n"
            "restore it (and its .sha256) from a backup, or start a new run")
    try:
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or someone else's pickle: torch raises many kinds
        raise _unreadable(path, _torch_reason(e)) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise _unreadable(path, f"it does not say format {CHECKPOINT_FORMAT!r}")
    version = ck.get("version")
    if version != CHECKPOINT_VERSION:
        who = "an older" if isinstance(version, int) and version < CHECKPOINT_VERSION else "another"
        raise CheckpointError(f"checkpoint {path!r} has format version {version!r} (written by {who} wgan-ext); "
                              f"this wgan-ext reads version {CHECKPOINT_VERSION}\nstart a new run")
    missing = [k for k in _NEEDED if k not in ck]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is incomplete (missing {', '.join(missing)})\n"
                              "restore it from a backup, or start a new run")
    if not isinstance(ck["config"], dict) or not isinstance(ck["optimizers"], dict):
        raise _misfit("its config or optimizer states are not dicts")
    _check_loop(ck["loop"])
    for state in [ck["rng"]] + [r.get("rng") if isinstance(r, dict) else None for r in ck.get("ranks") or ()]:
        _check_rng(state)
    generator_updates(ck)
    return ck
