"""fused_add_rms_norm: s = x + residual; y = rms_norm(s) * weight  (Triton kernel, the residual
flag of kernels/triton/rms_norm.py).

x, residual: (..., N) fp16|bf16|fp32 of one shape, rows may be strided; weight: (N,) same dtype.
Returns (y, s): s is the new residual stream, rounded to x's dtype as `x + residual` is, and y
normalizes that rounded s.  One pass over memory: reads x, residual and weight, writes y and s.
The backward sends one gradient to both inputs: d(s) = rms_norm's dx + the gradient reaching s.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _lib, reference
from ._common import (autograd_needed, check_eps, check_input, check_vector, direct, is_compiling, launch_rows,
                      native, register)
from .rms_norm import launch_backward

OP = "fused_add_rms_norm"


def _forward(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    lib, dev = native(x)
    if lib is None:
        return reference.fused_add_rms_norm(x, residual, weight, eps)
    return _launch(lib, dev, x, residual, weight, eps)


def _launch(lib, dev: int, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    s = torch.empty_like(x, memory_format=torch.contiguous_format)
    x2, m, n, stride_x = launch_rows(x)
    if m == 0 or n == 0:
        return y, s
    r2, _, _, stride_r = launch_rows(residual)
    w = weight.contiguous()
    rc = lib.fused_add_rms_norm_fwd(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x2.data_ptr(),
                                    r2.data_ptr(), w.data_ptr(), y.data_ptr(), s.data_ptr(), stride_x, stride_r,
                                    n, n, m, n, eps)
    if rc:
        raise lib.error(rc, OP)
    return y, s


def _backward(dy: torch.Tensor, ds: torch.Tensor, s: torch.Tensor, weight: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(s), dweight) from dy (the gradient of y) and ds (the gradient that reached s)."""
    lib, dev = native(s)
    if lib is None:
        return reference.fused_add_rms_norm_backward(dy, ds, s, weight, eps)
    return launch_backward(lib, dev, dy, s, weight, eps, dres=ds, op=OP)


def _fake(x, residual, weight, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


def _backward_fake(dy, ds, s, weight, eps):
    return torch.empty_like(s, memory_format=torch.contiguous_format), torch.empty_like(weight)


def _save(ctx, inputs, output):
    _, _, weight, eps = inputs
    ctx.save_for_backward(output[1], weight)
    ctx.eps = eps


def _grad(ctx, backward, dy, ds):
    s, weight = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(s)
    if ds is None:
        ds = torch.zeros_like(s)
    dsum, dw = backward(dy, ds, s, weight, ctx.eps)
    return dsum, dsum, (dw if ctx.needs_input_grad[2] else None), None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def _check(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    check_input(OP, x)
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"{OP}: residual must be a torch.Tensor, got {type(residual).__name__}")
    if residual.shape != x.shape:
        raise ValueError(f"{OP}: residual has shape {tuple(residual.shape)} but x has shape {tuple(x.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"{OP}: residual dtype {residual.dtype} does not match x dtype {x.dtype}")
    if residual.device != x.device:
        raise ValueError(f"{OP}: residual is on {residual.device} but x is on {x.device}")
    if weight is None:
        raise TypeError(f"{OP}: weight is required, got None (use torch.ones(N) for an unscaled norm)")
    check_vector(OP, x, weight, "weight")


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: Optional[float] = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * weight, x + residual): the pre-norm decoder's residual add and
    norm in one pass.

    x, residual: (..., N) fp16|bf16|fp32, same shape and dtype; weight: (N,) of x's dtype;
    eps > 0, or None for fp32's machine epsilon.  Returns two contiguous tensors of x's shape.
    """
    if type(eps) is not float or not 0.0 < eps < math.inf:
        eps = check_eps(OP, eps)
    fast = direct(x, weight)
    if (fast is not None and weight is not None and type(residual) is type(x) and residual.shape == x.shape
            and residual.dtype == x.dtype and residual.get_device() == fast[1] and not residual.requires_grad):
        return _launch(fast[0], fast[1], x, residual, weight, eps)
    _check(x, residual, weight)
    if is_compiling():
        return _op(x, residual, weight, eps)
    if autograd_needed(x, weight) or (residual.requires_grad and torch.is_grad_enabled()):
        return _EagerAutograd.apply(x, residual, weight, eps)
    return _forward(x, residual, weight, eps)


__all__ = ["fused_add_rms_norm"]
