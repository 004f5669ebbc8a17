"""add_relu: y = relu(a + b)  (CUDA C++ kernel, kernels/cuda/add_relu.cu, compiled by NVRTC).

a: (..., N) fp16|bf16|fp32|fp64, rows may be strided; b: a's shape, or (N,) broadcast over a's
rows; same dtype and device.  The backward gives da = dy * [y > 0] (from the saved output, as
torch's ReLU) and db = da, or for a broadcast b da summed over the rows: per row group in fp32
(fp64 for fp64), the groups added in a fixed order (deterministic).
"""
from __future__ import annotations

import torch

from .. import _lib, reference
from ._binary import (check_pair, direct, dtype_code, is_broadcast, launch_forward, layout,
                      row_stride_or_0)
from ._common import autograd_needed, column_sums, is_compiling, native, register, rows

OP = "add_relu"


def _forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lib, dev = native(a)
    if lib is None:
        return reference.add_relu(a, b)
    return _launch(lib, dev, a, b)


def _launch(lib, dev: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return launch_forward(lib, lib.add_relu_fwd, OP, dev, a, b)


def _backward(dy: torch.Tensor, y: torch.Tensor, broadcast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(da, db): db is da summed over the rows when broadcast, else empty (the caller uses da)."""
    lib, dev = native(y)
    if lib is None:
        return reference.add_relu_backward(dy, y, broadcast)
    da = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    if not broadcast:
        if y.numel():
            m, n, ((y2, sy), (dy2, sdy)) = layout(y, dy)
            _launch_bwd(lib, dev, dy2, y2, da, 0, 0, sdy, sy, m, n, 0)
        return da, y.new_empty(0)
    n = y.shape[-1]
    if y.numel() == 0:
        return da, torch.zeros(n, dtype=y.dtype, device=y.device)
    y2, dy2 = rows(y), rows(dy)  # the column-sum kernel walks rows
    m = y2.shape[0]
    db = column_sums(lib, dev, OP + " backward", m, n, y.dtype,
                     lambda db_ptr, partial_ptr, g: _launch_bwd(lib, dev, dy2, y2, da, db_ptr, partial_ptr,
                                                                row_stride_or_0(dy2), row_stride_or_0(y2), m, n, g))
    return da, db


def _launch_bwd(lib, dev, dy2, y2, da, db_ptr, partial_ptr, sdy, sy, m, n, g):
    rc = lib.add_relu_bwd(_lib.current_stream(dev), dev, dtype_code(y2), dy2.data_ptr(), y2.data_ptr(),
                          da.data_ptr(), db_ptr, partial_ptr, sdy, sy, m, n, g)
    if rc:
        raise lib.error(rc, OP + " backward")


def _fake(a, b):
    return torch.empty(a.shape, dtype=a.dtype, device=a.device)


def _backward_fake(dy, y, broadcast):
    return (torch.empty(y.shape, dtype=y.dtype, device=y.device),
            y.new_empty(y.shape[-1] if broadcast else 0))


def _save(ctx, inputs, output):
    a, b = inputs
    ctx.save_for_backward(output)
    ctx.broadcast = is_broadcast(a, b)


def _grad(ctx, backward, dy):
    (y,) = ctx.saved_tensors
    da, db = backward(dy, y, ctx.broadcast)
    return da, (db if ctx.broadcast else da)


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def add_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """relu(a + b), b of a's shape or (N,) broadcast over a's rows.

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
