"""rms_norm: y = x / sqrt(mean(x^2, -1) + eps) * weight  (Triton kernel, kernels/triton/rms_norm.py).

x: (..., N) fp16|bf16|fp32, rows may be strided; weight: (N,) same dtype, or None.
The backward gives dx and dweight; dweight is summed per program in fp32 and the
partial sums are added in a fixed order, so it is deterministic.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _lib, reference
from ._common import (autograd_needed, check_eps, check_input, check_vector, direct, dtype_code, is_compiling,
                      launch_rows, native, register, row_stride, rows)

OP = "rms_norm"


def _forward(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference.rms_norm(x, weight, eps)
    return _launch(lib, dev, x, weight, eps)


def _launch(lib, dev: int, x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    x2, m, n, stride = launch_rows(x)
    if m == 0 or n == 0:
        return y
    w = None if weight is None else weight.contiguous()
    rc = lib.rms_norm_fwd(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x2.data_ptr(), y.data_ptr(),
                          0 if w is None else w.data_ptr(), stride, n, m, n, eps)
    if rc:
        raise lib.error(rc, OP)
    return y


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    lib, dev = native(x)
    if lib is None:
        return reference.rms_norm_backward(dy, x, weight, eps)
    return launch_backward(lib, dev, dy, x, weight, eps)


def launch_backward(lib, dev: int, dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                    eps: float, dres: Optional[torch.Tensor] = None, op: str = OP):
    """(dx, dweight) of rms_norm on a CUDA device; with dres (fused_add_rms_norm's backward, x
    being the sum it normalized), dx also carries dres."""
    if x.numel() == 0:
        dw = torch.zeros_like(weight) if weight is not None else x.new_empty(0)
        return torch.empty_like(x, memory_format=torch.contiguous_format), dw
    x2, dy2 = rows(x), rows(dy)
    w = None if weight is None else weight.contiguous()
    m, n = x2.shape
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    dw = None if weight is None else torch.empty_like(weight, memory_format=torch.contiguous_format)
    stream, code, sms = _lib.current_stream(dev), dtype_code(x), _lib.sm_count(dev)
    ptrs = (dy2.data_ptr(), x2.data_ptr(), 0 if w is None else w.data_ptr(), dx.data_ptr())
    dres2 = None if dres is None else rows(dres)
    wide = n * x.element_size() > _WIDE_BYTES
    g = max(1, min(m, 8 * sms // -(-n // _WIDE_CHUNK))) if wide else _programs(m, n, sms)
    partial = torch.empty((g, n) if weight is not None else (0,), dtype=torch.float32, device=x.device)
    ptrs += (partial.data_ptr(), 0 if dw is None else dw.data_ptr())
    if wide:
        stats = torch.empty((m, -(-n // _STATS_CHUNK), 2), dtype=torch.float32, device=x.device)
        rc = lib.rms_norm_bwd_stats(stream, dev, code, *ptrs[:3], stats.data_ptr(), row_stride(dy2),
                                    row_stride(x2), m, n, eps)
        if not rc:
            rc = lib.rms_norm_bwd_wide(stream, dev, code, *ptrs, 0 if dres2 is None else dres2.data_ptr(),
                                       stats.data_ptr(), row_stride(dy2), row_stride(x2), n,
                                       0 if dres2 is None else row_stride(dres2), m, n, eps, g)
    elif dres2 is None:
        rc = lib.rms_norm_bwd(stream, dev, code, *ptrs, row_stride(dy2), row_stride(x2), n, m, n, eps, g)
    else:
        rc = lib.fused_add_rms_norm_bwd(stream, dev, code, *ptrs, dres2.data_ptr(), row_stride(dy2),
                                        row_stride(x2), n, row_stride(dres2), m, n, eps, g)
    if rc:
        raise lib.error(rc, op + " backward")
    if dw is None:
        return dx.view(x.shape), x.new_empty(0)
    if g > 1:  # with one program (row group) the kernel wrote dw itself
        rc = lib.rms_norm_dw(stream, dev, code, partial.data_ptr(), dw.data_ptr(), g, n)
        if rc:
            raise lib.error(rc, op + " backward")
    return dx.view(x.shape), dw


# Rows wider than this many bytes take the two-kernel wide backward: statistics per chunk of
# _STATS_CHUNK columns, dx and dw per chunk of _WIDE_CHUNK (aot/specs/rms_norm.py: WIDE_BYTES,
# RMS_NORM_WIDE).
_WIDE_BYTES = 32768
_STATS_CHUNK = 8192
_WIDE_CHUNK = 2048


def _programs(m: int, n: int, sms: int) -> int:
    """Programs of the one-kernel backward, each writing one fp32 row of partial dw.  Up to 2
    per SM, one row each, while rows are few (latency-bound: parallelism first); beyond, at
    least 8 rows per program, between 2 and 8 programs per SM, so the partial sums stay small
    next to x.  Rows wider than 8192 take 2 programs an SM, as many as fit at once: more only
    queue behind them and add partial rows (H200, 16384 wide: 1.01-1.04x faster than 8 an SM at
    16384-32768 rows, 1.16x at 4096)."""
    if m <= 2 * sms:
        return m
    if n > 8192:
        return 2 * sms
    return max(2 * sms, min(8 * sms, m // 8))


def _fake(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(dy, x, weight, eps):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw


def _save(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _grad(ctx, backward, dy):
    x, weight = ctx.saved_tensors
    dx, dw = backward(dy, x, weight, ctx.eps)
    return dx, (dw if weight is not None and ctx.needs_input_grad[1] else None), None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: Optional[float] = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension.

    x: (..., N) fp16|bf16|fp32; weight: (N,) of x's dtype or None; eps > 0, or None for
    fp32's machine epsilon (as torch.nn.functional.rms_norm).  Returns a contiguous tensor
    of x's shape and dtype.  Strided rows are read in place; a non-contiguous last dimension is copied first.
    """
    if type(eps) is not float or not 0.0 < eps < math.inf:
        eps = check_eps(OP, eps)
    fast = direct(x, weight)
    if fast is not None:
        return _launch(fast[0], fast[1], x, weight, eps)
    check_input(OP, x)
    if weight is not None:
        check_vector(OP, x, weight, "weight")
    if is_compiling():
        return _op(x, weight, eps)
    if autograd_needed(x, weight):
        return _EagerAutograd.apply(x, weight, eps)
    return _forward(x, weight, eps)


__all__ = ["rms_norm"]
