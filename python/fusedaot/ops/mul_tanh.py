"""mul_tanh: y = tanh(a * b)  (CUDA C++ kernel, kernels/cuda/mul_tanh.cu, compiled by NVRTC).

a: (..., N) fp16|bf16|fp32|fp64, rows may be strided; b: a's shape, or (N,) broadcast over a's
rows; same dtype and device.  The backward recomputes t = tanh(a b) from a and b and gives
da = dy (1 - t^2) b and db = dy (1 - t^2) a, for a broadcast b summed over the rows: per row
group in fp32 (fp64 for fp64), the groups added in a fixed order (deterministic).
"""
from __future__ import annotations

import torch

from .. import _lib, reference
from ._binary import (check_pair, direct, dtype_code, is_broadcast, launch_forward, layout,
                      row_stride_or_0)
from ._common import autograd_needed, column_sums, is_compiling, native, register, rows

OP = "mul_tanh"


def _forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lib, dev = native(a)
    if lib is None:
        return reference.mul_tanh(a, b)
    return _launch(lib, dev, a, b)


def _launch(lib, dev: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return launch_forward(lib, lib.mul_tanh_fwd, OP, dev, a, b)


def _backward(dy: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lib, dev = native(a)
    if lib is None:
        return reference.mul_tanh_backward(dy, a, b)
    da = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if not is_broadcast(a, b):
        db = torch.empty(b.shape, dtype=b.dtype, device=b.device)
        if a.numel():
            m, n, ((a2, sa), (dy2, sdy), (b2, sb)) = layout(a, dy, b)
            _launch_bwd(lib, dev, dy2, a2, b2, da, db.data_ptr(), 0, sdy, sa, sb, m, n, 0)
        return da, db
    n = a.shape[-1]
    if a.numel() == 0:
        return da, torch.zeros(n, dtype=b.dtype, device=b.device)
    a2, dy2, b2 = rows(a), rows(dy), b.contiguous()  # the column-sum kernel walks rows
    m = a2.shape[0]
    db = column_sums(lib, dev, OP + " backward", m, n, b.dtype,
                     lambda db_ptr, partial_ptr, g: _launch_bwd(lib, dev, dy2, a2, b2, da, db_ptr, partial_ptr,
                                                                row_stride_or_0(dy2), row_stride_or_0(a2), 0, m, n, g))
    return da, db


def _launch_bwd(lib, dev, dy2, a2, b2, da, db_ptr, partial_ptr, sdy, sa, sb, m, n, g):
    rc = lib.mul_tanh_bwd(_lib.current_stream(dev), dev, dtype_code(a2), dy2.data_ptr(), a2.data_ptr(),
                          b2.data_ptr(), da.data_ptr(), db_ptr, partial_ptr, sdy, sa, sb, m, n, g)
    if rc:
        raise lib.error(rc, OP + " backward")


def _fake(a, b):
    return torch.empty(a.shape, dtype=a.dtype, device=a.device)


def _backward_fake(dy, a, b):
    return (torch.empty(a.shape, dtype=a.dtype, device=a.device),
            torch.empty(b.shape, dtype=b.dtype, device=b.device))


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grad(ctx, backward, dy):
    a, b = ctx.saved_tensors
    return backward(dy, a, b)


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def mul_tanh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tanh(a * b), b of a's shape or (N,) broadcast over a's rows.

    a: (..., N) fp16|bf16|fp32|fp64; b: a's shape or (N,), a's dtype and device.
    Returns a contiguous tensor of a's shape and dtype.  Arithmetic is fp32 (fp64 for fp64).
    """
    fast = direct(a, b)
    if fast is not None:
        return _launch(fast[0], fast[1], a, b)
    check_pair(OP, a, b)
    if is_compiling():
        return _op(a, b)
    if autograd_needed(a, b):
        return _EagerAutograd.apply(a, b)
    return _forward(a, b)
