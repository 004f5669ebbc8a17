"""Argument checks and layout helpers shared by every op."""
from __future__ import annotations

import math

import torch

from .. import _lib

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DEVICE_TYPES = ("cuda", "cpu", "meta")


def check_input(op: str, x: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes[:-1]) + " or " + str(dtypes[-1]).replace("torch.", "")
        raise TypeError(f"{op}: x must be {names}, got {x.dtype}")
    if x.device.type not in _DEVICE_TYPES:
        raise ValueError(f"{op}: tensors on {x.device.type!r} are not supported; use CUDA or CPU tensors")
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension, got a scalar")


def check_vector(op: str, x: torch.Tensor, v: torch.Tensor, name: str) -> None:
    """v must be (N,) with N = x.shape[-1], x's dtype, on x's device."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(v).__name__}")
    if v.dim() != 1 or v.shape[0] != x.shape[-1]:
        shape = f"{v.numel()} elements" if v.dim() == 1 else f"shape {tuple(v.shape)}"
        raise ValueError(f"{op}: {name} has {shape} but x's last dimension is {x.shape[-1]}")
    if v.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {v.dtype} does not match x dtype {x.dtype}")
    if v.device != x.device:
        raise ValueError(f"{op}: {name} is on {v.device} but x is on {x.device}")


def check_eps(op: str, eps, dtype: torch.dtype) -> float:
    """The eps to use: None means torch.finfo(dtype).eps, as in torch.nn.functional.rms_norm."""
    if eps is None:
        return torch.finfo(dtype).eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{op}: eps must be a positive finite number, got {eps}")
    return float(eps)


def rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., N) as an (M, N) view with a row stride and a unit column stride.

    Strided rows are kept as they are.  A non-unit last-dimension stride, or leading
    dimensions that cannot be merged into one stride, cost one copy.
    """
    n = x.shape[-1]
    if x.stride(-1) != 1 and n > 1:
        x = x.contiguous()
    if x.dim() == 2:
        return x
    try:
        return x.view(-1, n)
    except RuntimeError:
        return x.reshape(-1, n)


def row_stride(x2d: torch.Tensor) -> int:
    # A single row's stride is arbitrary (even 0); the kernels only multiply it by 0.
    return x2d.stride(0) if x2d.shape[0] > 1 else x2d.shape[1]


def autograd_needed(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_dispatcher(*tensors) -> bool:
    """True when the call must go through the torch.library op: autograd or torch.compile."""
    return autograd_needed(*tensors) or torch.compiler.is_compiling()


def native(x: torch.Tensor):
    """(Library, device index) for a CUDA tensor on a supported GPU, else (None, None)."""
    if x.device.type != "cuda":
        return None, None
    index = x.device.index
    return _lib.device_library(index), index


def dtype_code(x: torch.Tensor) -> int:
    return _lib.DTYPE_CODES[x.dtype]
