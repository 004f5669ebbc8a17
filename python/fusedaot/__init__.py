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
from .ops import attention_scores, dequantize_fp8, fp8_gemm, fused_gated_mlp, quantize_fp8
from .ops import bias_gelu, fused_add_rms_norm, rms_norm
from .ops import add_relu, gelu_dropout, mul_tanh, reduce_mean_abs, reduce_sum_squared
from .ops import apply_rope, apply_rope_, rms_norm_rope
from .ops import ada_layer_norm, layer_norm, layer_norm_relu
from .ops import geglu, gelu_and_mul, silu_and_mul, swiglu

__version__ = (Path(__file__).resolve().parent / "VERSION").read_text().strip()
__all__ = ["FusedAOTError", "add_relu", "gelu_dropout", "mul_tanh", "reduce_mean_abs", "reduce_sum_squared", "apply_rope", "apply_rope_", "rms_norm_rope", "ada_layer_norm", "layer_norm", "layer_norm_relu", "arch_for", "attention_scores", "dequantize_fp8", "fp8_gemm", "fused_gated_mlp", "quantize_fp8", "bias_gelu", "fused_add_rms_norm", "geglu", "gelu_and_mul", "load", "nn", "reference", "rms_norm", "silu_and_mul", "swiglu"]


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
