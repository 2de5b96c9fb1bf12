"""torch.distributed support: which memory holds a parameter's values on this process.

Weight clipping is elementwise, so it commutes with data parallelism (DDP: every replica clamps
the same values) and with sharding: an FSDP2 parameter is a DTensor whose local shard on each
rank is clamped in place, with no communication. That is exact for Shard and Replicate
placements; a Partial placement holds addends of the values, and is refused.
"""

from __future__ import annotations

import torch

__all__ = ["local_tensor"]

# Tensors that are not subclasses (such as DTensor): their own memory holds their values.
PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory holds ``t``'s values on this process: a DTensor's local shard,
    else ``t`` itself. Raises ``ValueError`` for a DTensor with a Partial placement."""
    if type(t) in PLAIN_TYPES or not torch.distributed.is_available():
        return t
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t
    for placement in t.placements:
        if placement.is_partial():
            raise ValueError(
                f"fused_clip_: a DTensor with placements {t.placements} holds partial values on "
                "each rank; clamping them is not clamping their sum: redistribute it to Shard "
                "or Replicate first"
            )
    return t._local_tensor
