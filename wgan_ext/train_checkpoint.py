"""``checkpoint.pt`` of a ``wgan-ext train`` run: what it holds, writing it atomically, reading it safely.

A checkpoint holds everything the future of the run depends on: the config, both models and
optimizers, the losses' ``state_dict`` (update counts, last values), torchgan's
``loss_information``, the RNG states (torch, numpy, python) and the loop's own state (data
stream position, period, the period's running sums, the metrics so far). On CPU a run resumed
from it ends with the same parameters, bit for bit, as the uninterrupted run (same machine,
same thread count). It loads with ``weights_only=True``: no code runs on load.

A run on several processes (rank 0 writes it) saves full, unsharded models with the keys of a
single process (an FSDP2 critic's optimizer state is keyed by parameter name), and adds
``ranks``: each rank's RNG states and period sums.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from . import plots as P
from .train_config import TrainError

__all__ = [
    "CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint",
    "checkpoint_payload", "restore_training_state", "generator_updates", "rng_state", "set_rng_state",
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
        TrainError: the checkpoint's networks or losses do not fit these objects.
    """
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
    except (KeyError, RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"checkpoint does not fit this run's networks ({msg[:160]})") from None
    trainer.loss_information = dict(ck["loss_information"])
    set_rng_state(ck["rng"] if rng is None else rng)


def generator_updates(ck: Dict[str, Any]) -> int:
    """Generator iterations done when ``ck`` was written."""
    try:
        return int(ck["losses"]["critic"]["_extra_state"]["counter"]["generator_updates"])
    except (KeyError, TypeError, ValueError):
        raise TrainError("checkpoint is incomplete (no generator update count in its critic loss state)") from None


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace`` (atomic)."""
    with P.atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())


def _torch_reason(e: Exception) -> str:
    """The gist of torch.load's error in one line: the weights-only unpickler's finding, else the
    first sentence (torch appends paragraphs of advice)."""
    text = " ".join(str(e).split())
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text)
    if found:
        return f"torch.load(weights_only=True): {found.group(1)}"
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _unreadable(path: str, reason: str) -> TrainError:
    return TrainError(f"checkpoint {path!r} is unreadable or not a wgan-ext checkpoint\nreason: {reason}")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load and sanity-check a run checkpoint.

    Raises:
        TrainError: no file; unreadable or someone else's file (message, then the reason on a
            second line); another format version; entries missing.
    """
    if not os.path.isfile(path):
        raise TrainError(f"no checkpoint at {path!r}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or someone else's pickle: torch raises many kinds
        raise _unreadable(path, _torch_reason(e)) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise _unreadable(path, f"it does not say format {CHECKPOINT_FORMAT!r}")
    version = ck.get("version")
    if version != CHECKPOINT_VERSION:
        who = "an older" if isinstance(version, int) and version < CHECKPOINT_VERSION else "another"
        raise TrainError(f"checkpoint {path!r} has format version {version!r} (written by {who} wgan-ext); this "
                         f"wgan-ext reads version {CHECKPOINT_VERSION}: start a new run")
    missing = [k for k in _NEEDED if k not in ck]
    if missing:
        raise TrainError(f"checkpoint {path!r} is incomplete (missing {', '.join(missing)})")
    return ck
