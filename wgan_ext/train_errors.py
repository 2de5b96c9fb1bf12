"""The failures of a ``wgan-ext train`` run that are not bad input, each with its exit code.

:class:`~wgan_ext.train_config.TrainError` itself is bad input (exit code 2). Every class here
carries a message of one or two lines that names the cause and what to do; the CLI prints it
and exits with :attr:`exit_code` (listed in ``wgan-ext train --help`` and the README).
"""

from __future__ import annotations

from .train_config import TrainError

__all__ = ["TrainError", "CheckpointError", "DivergedError", "RunWriteError", "EXIT_CODES"]


class CheckpointError(TrainError):
    """A checkpoint that cannot be used: unreadable, corrupted (its SHA-256 differs), from
    another format version, or holding contents that do not fit its run. Nothing was modified."""

    exit_code = 4


class DivergedError(TrainError):
    """The weights or samples became non-finite (NaN or inf). The run folder keeps the last
    checkpoint written before (every checkpoint holds finite weights)."""

    exit_code = 5


class RunWriteError(TrainError):
    """The run folder could not be written (disk full, folder removed, ...) during the run. The
    last checkpoint written before stays as it was."""

    exit_code = 6


EXIT_CODES = {
    0: "done (or, with --resume, nothing left to do)",
    2: "bad input, or numbers the run cannot hold (nothing written)",
    3: 'the [train] extras are missing: pip install "wgan-ext[train]" (nothing written)',
    4: "checkpoint unreadable, corrupted or not fitting its run (nothing modified)",
    5: "training diverged (non-finite weights or samples); the last finite checkpoint is kept",
    6: "the run folder could not be written (e.g. disk full); the last checkpoint is kept",
    130: "interrupted (Ctrl-C); a checkpoint is kept if one was written",
}
"""Exit codes of ``wgan-ext train`` (1 is left to Python: an unexpected error, a bug)."""
