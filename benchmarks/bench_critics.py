"""Critic shapes for the benchmarks, and the weight state they start from.

Every critic is built on its device in its dtype with a fixed seed; then every parameter is drawn
uniform in [-2c, 2c] (about half of each tensor out of range, the worst case after an RMSprop step
with weight clipping). The benchmarks restore that state before every timed call (see
``Weights.restore``), so no contender times an already-clipped tensor.

| name       | what                                                           | tensors | params           |
|------------|----------------------------------------------------------------|--------:|------------------|
| dcgan64    | torchgan ``DCGANDiscriminator(in_size=64)``                     |      12 | 2.77 M           |
| mlp3x512   | the WGAN paper's MLP critic: 64*64*3 -> 3 x 512 -> 1            |       8 | 6.82 M           |
| small800   | 200 residual blocks x + LeakyReLU(Linear(LayerNorm(x))), d = 64 |     800 | 0.86 M           |
| large      | Linear(d, d) stack: 6 x 4096 on CUDA, 10 x 1024 on CPU          |  12 / 20 | 100.7 M / 10.5 M |
| tiny800    | 800 one-element parameters: no clamp work, only per-tensor cost |     800 | 800              |
"""

from __future__ import annotations

import torch
from torch import nn

C = 0.01  # the paper's clip value (Algorithm 1 default)
LO, HI = -C, C

CRITICS = ("dcgan64", "mlp3x512", "small800", "large")
SHAPES = CRITICS + ("tiny800",)  # tiny800: a probe of per-tensor overhead, not a critic
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
IMAGE = (3, 64, 64)


class MLPCritic(nn.Module):
    """The WGAN paper's MLP critic (``MLP_D``): 3 hidden layers of 512 units, ReLU, scalar out."""

    def __init__(self, in_features: int = 3 * 64 * 64, hidden: int = 512, layers: int = 3):
        super().__init__()
        mods: list = [nn.Flatten()]
        width = in_features
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods.append(nn.Linear(width, 1))
        self.main = nn.Sequential(*mods)

    def forward(self, x):
        return self.main(x).view(-1)


class ResidualCritic(nn.Module):
    """``blocks`` residual blocks ``x + LeakyReLU(Linear(LayerNorm(x)))``: 4 small tensors each.

    Residual so that gradients neither vanish nor sink into denormals across 200 blocks of
    1e-2-sized weights (a plain chain spends 20x longer in a CPU backward on denormals).
    """

    def __init__(self, blocks: int, d: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.LeakyReLU(0.2)) for _ in range(blocks)
        )

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x.mean(dim=-1)  # parameter-free head: exactly 4 tensors per block


class DeepMLPCritic(nn.Module):
    """``layers`` x (Linear(d, d), LeakyReLU): the large critic, a few big tensors."""

    def __init__(self, layers: int, d: int):
        super().__init__()
        self.main = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(d, d), nn.LeakyReLU(0.2))])

    def forward(self, x):
        return self.main(x).mean(dim=-1)


def _large_dims(device: torch.device) -> tuple[int, int]:
    # 6 x 4096^2 = 100.7 M parameters on CUDA (400 MB in fp32); 10 x 1024^2 = 10.5 M on CPU.
    return (4096, 6) if device.type == "cuda" else (1024, 10)


def build(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Critic ``name`` on ``device`` in ``dtype``, parameters uniform in [-2c, 2c]."""
    torch.manual_seed(seed)
    with device:  # construct in place: no 100 M-parameter init on the host for CUDA
        critic = _construct(name, device)
    critic = critic.to(dtype=dtype)
    with torch.no_grad():
        for p in critic.parameters():
            p.uniform_(-2 * C, 2 * C)
    return critic


def _construct(name: str, device: torch.device) -> nn.Module:
    if name == "dcgan64":
        from torchgan.models import DCGANDiscriminator

        critic = DCGANDiscriminator(in_size=64)
    elif name == "mlp3x512":
        critic = MLPCritic()
    elif name == "small800":
        critic = ResidualCritic(blocks=200, d=64)
    elif name == "large":
        d, layers = _large_dims(device)
        critic = DeepMLPCritic(layers=layers, d=d)
    elif name == "tiny800":
        critic = nn.ParameterList(nn.Parameter(torch.empty(1)) for _ in range(800))
    else:
        raise ValueError(f"unknown critic shape {name!r}; known: {SHAPES}")
    return critic


def input_shape(name: str, device: torch.device) -> tuple:
    """Shape of one critic input sample."""
    if name in ("dcgan64", "mlp3x512"):
        return IMAGE
    if name == "small800":
        return (64,)
    return (_large_dims(device)[0],)


class Weights:
    """A pristine copy of some tensors, to put back before each timed call (outside the timing)."""

    def __init__(self, tensors):
        self.tensors = [t.detach() for t in tensors]
        self.pristine = [t.clone() for t in self.tensors]

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.tensors, self.pristine)
        if self.tensors and self.tensors[0].device.type == "cuda":
            torch.cuda.synchronize()


def numel(critic: nn.Module) -> int:
    return sum(p.numel() for p in critic.parameters())
