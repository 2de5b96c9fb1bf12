"""The kernel sources, relative to ``csrc/``: what ``setup.py`` compiles and what a build on first
use compiles (:mod:`wgan_ext._ext`). No imports: ``setup.py`` reads this file without importing
the package (or torch)."""

CPU = ("ops.cpp", "cpu/fused_clip.cpp", "cpu/rmsprop_clip.cpp")
CUDA = ("cuda/fused_clip.cu", "cuda/rmsprop_clip.cu")

# Compiled for when no GPU is visible to detect: Ampere and Hopper, plus PTX that newer GPUs
# compile on load.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
