"""bias_gelu: y = gelu(x + bias)  (CUDA C++ kernel, kernels/cuda/bias_gelu.cu, compiled by NVRTC).

x: (..., N) fp16|bf16|fp32, rows may be strided; bias: (N,) same dtype;
approximate: "none" (erf) or "tanh".  The backward gives dx and dbias; dbias is summed
per row group in fp32 and the groups are added in a fixed order (deterministic).
"""
from __future__ import annotations

import torch

from .. import _lib, reference
from ._common import (autograd_needed, check_input, check_vector, column_sums, direct, dtype_code, is_compiling,
                      launch_rows, native, register, row_stride, rows)

OP = "bias_gelu"
_APPROXIMATE = {"none": 0, "tanh": 1}


def _forward(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference.bias_gelu(x, bias, approximate)
    return _launch(lib, dev, x, bias, approximate)


def _launch(lib, dev: int, x: torch.Tensor, bias: torch.Tensor, approximate: str) -> torch.Tensor:
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    x2, m, n, stride = launch_rows(x)
    if m == 0 or n == 0:
        return y
    b = bias.contiguous()
    rc = lib.bias_gelu_fwd(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x2.data_ptr(), b.data_ptr(),
                           y.data_ptr(), stride, m, n, _APPROXIMATE[approximate])
    if rc:
        raise lib.error(rc, OP)
    return y


def _backward(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
              approximate: str) -> tuple[torch.Tensor, torch.Tensor]:
    lib, dev = native(x)
    if lib is None:
        return reference.bias_gelu_backward(dy, x, bias, approximate)
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format), torch.zeros_like(bias)
    x2, dy2, b = rows(x), rows(dy), bias.contiguous()
    m, n = x2.shape
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    stream, code, approx = _lib.current_stream(dev), dtype_code(x), _APPROXIMATE[approximate]

    def launch(dbias_ptr: int, partial_ptr: int, g: int) -> None:
        rc = lib.bias_gelu_bwd(stream, dev, code, dy2.data_ptr(), x2.data_ptr(), b.data_ptr(), dx.data_ptr(),
                               dbias_ptr, partial_ptr, row_stride(dy2), row_stride(x2), m, n, approx, g)
        if rc:
            raise lib.error(rc, OP + " backward")

    return dx.view(x.shape), column_sums(lib, dev, OP + " backward", m, n, bias.dtype, launch)


def _fake(x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(dy, x, bias, approximate):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(bias)


def _save(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _grad(ctx, backward, dy):
    x, bias = ctx.saved_tensors
    dx, dbias = backward(dy, x, bias, ctx.approximate)
    return dx, dbias, None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) with bias broadcast over the rows of x.

    x: (..., N) fp16|bf16|fp32; bias: (N,) of x's dtype; approximate: "none" | "tanh".
    Returns a contiguous tensor of x's shape and dtype.  Arithmetic is fp32.
    """
    fast = direct(x, bias) if bias is not None and approximate in _APPROXIMATE else None
    if fast is not None:
        return _launch(fast[0], fast[1], x, bias, approximate)
    check_input(OP, x)
    check_vector(OP, x, bias, "bias")
    if approximate not in _APPROXIMATE:
        raise ValueError(f"{OP}: approximate must be 'none' or 'tanh', got {approximate!r}")
    if is_compiling():
        return _op(x, bias, approximate)
    if autograd_needed(x, bias):
        return _EagerAutograd.apply(x, bias, approximate)
    return _forward(x, bias, approximate)
