"""fusedaot: fused transformer kernels compiled ahead of time.

The wheel carries one native library per GPU architecture (sm80, sm89, sm90, and PTX for
newer GPUs); importing fusedaot needs neither Triton nor a GPU.  CPU tensors, GPUs older
than sm80 and FUSEDAOT_DISABLE=1 use the PyTorch reference implementations.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import nn, reference
from ._lib import FusedAOTError, arch_for
from .ops import bias_gelu, fused_add_rms_norm, rms_norm

__version__ = (Path(__file__).resolve().parent / "VERSION").read_text().strip()
__all__ = ["FusedAOTError", "arch_for", "bias_gelu", "fused_add_rms_norm", "load", "nn", "reference", "rms_norm"]


def load(device=None) -> None:
    """Load every kernel on `device` (default: the current CUDA device) now.

    Kernels otherwise load on first use; loading is not allowed while a CUDA graph is
    being captured, so call this before capture.  With the PTX library this is also
    when the driver JIT-compiles the kernels (cached by the driver afterwards).
    """
    from . import _lib

    if not torch.cuda.is_available():
        return
    index = torch.device("cuda" if device is None else device).index
    if index is None:
        index = torch.cuda.current_device()
    lib = _lib.device_library(index)
    if lib is not None:
        lib.load(index)
