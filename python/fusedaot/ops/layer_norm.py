"""layer_norm: y = act((x - mean) / sqrt(var + eps) * weight + bias), act = identity or ReLU
(Triton kernels, kernels/triton/layer_norm.py; the forward of aligned 16-bit rows 2049-65536 wide
from 2048 rows in CUDA C++, kernels/cuda/layer_norm.cu, chosen by the library's dispatch).

x: (..., N) fp16|bf16|fp32, rows may be strided; weight, bias: (N,) of x's dtype, or fp32 with a
16-bit x (both the same dtype), or None.  The backward gives dx, dweight and dbias; dweight and
dbias are summed per program in fp32 and the partial sums are added in a fixed order, so they are
deterministic.  Rows up to 8192 wide take one fused backward kernel; wider rows take two
(per-row sums, then a 2-D grid over row groups x column blocks), which keeps dweight and dbias in
registers however wide the row.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _lib, reference
from ._common import (check_eps, check_input, direct, dtype_code, is_compiling, launch_rows, native,
                      register, row_stride, rows)

OP = "layer_norm"
_ACTIVATIONS = {None: False, "relu": True}
_PARAM_TYPES = (torch.Tensor, torch.nn.Parameter)
# flags of the kernels (kernels/triton/layer_norm.py, kernels/cuda/layer_norm.cu)
_HAS_W, _HAS_B, _PARAMS_FP32, _RELU = 1, 2, 4, 8
# Rows wider than this take the two-kernel backward (aot/specs/layer_norm.py: LAYER_NORM_SPLIT_ABOVE),
# whose second kernel takes LAYER_NORM_DX's 512 columns per program, 2 rows a step.
_SPLIT_ABOVE = 8192
_DX_COLUMNS, _DX_ROWS = 512, 2


def _flags(x: torch.Tensor, weight, bias, relu: bool) -> int:
    p = weight if weight is not None else bias
    return ((weight is not None) * _HAS_W | (bias is not None) * _HAS_B | relu * _RELU
            | (p is not None and p.dtype != x.dtype) * _PARAMS_FP32)


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
             relu: bool) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference.layer_norm(x, weight, bias, eps, "relu" if relu else None)
    return _launch(lib, dev, x, weight, bias, eps, relu)


def _launch(lib, dev: int, x: torch.Tensor, weight, bias, eps: float, relu: bool) -> torch.Tensor:
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    x2, m, n, stride = launch_rows(x)
    if m == 0 or n == 0:
        return y
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    rc = lib.layer_norm_fwd(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x2.data_ptr(), y.data_ptr(),
                            _ptr(w), _ptr(b), stride, n, m, n, eps, _flags(x, weight, bias, relu))
    if rc:
        raise lib.error(rc, OP)
    return y


def _programs(m: int, n: int, sms: int) -> int:
    """Programs of the fused backward, each with one fp32 row of partial dw/db: one per row for
    few rows (latency), else one to four per SM with at least 16 rows each, so that writing
    and re-reading the partial rows stays a few percent of the traffic."""
    return max(1, min(m, max(sms, min(4 * sms, m // 16))))


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              eps: float, relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lib, dev = native(x)
    if lib is None:
        return reference.layer_norm_backward(dy, x, weight, bias, eps, "relu" if relu else None)
    if x.numel() == 0:
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.zeros_like(weight) if weight is not None else x.new_empty(0),
                torch.zeros_like(bias) if bias is not None else x.new_empty(0))
    x2, dy2 = rows(x), rows(dy)
    m, n = x2.shape
    w = None if weight is None else weight.contiguous()
    b = None if bias is None else bias.contiguous()
    flags = _flags(x, weight, bias, relu)
    affine = w is not None or b is not None
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    dw = None if w is None else torch.empty_like(w)
    db = None if b is None else torch.empty_like(b)
    stream, code, sms = _lib.current_stream(dev), dtype_code(x), _lib.sm_count(dev)
    strides = (row_stride(dy2), row_stride(x2), n)
    if n <= _SPLIT_ABOVE:
        g = _programs(m, n, sms)
        partial = torch.empty((g, 2 * n) if affine else (0,), dtype=torch.float32, device=x.device)
        rc = lib.layer_norm_bwd(stream, dev, code, dy2.data_ptr(), x2.data_ptr(), _ptr(w), _ptr(b), dx.data_ptr(),
                                partial.data_ptr(), _ptr(dw), _ptr(db), *strides, m, n, eps, flags, g)
    else:
        stats = torch.empty((m, 4), dtype=torch.float32, device=x.device)
        rc = lib.layer_norm_bwd_stats(stream, dev, code, dy2.data_ptr(), x2.data_ptr(), _ptr(w), _ptr(b),
                                      stats.data_ptr(), *strides[:2], m, n, eps, flags)
        # row groups: with the column blocks, about four programs per SM
        g = max(1, min(-(-m // _DX_ROWS), -(-4 * sms // -(-n // _DX_COLUMNS))))
        partial = torch.empty((g, 2 * n) if affine and g > 1 else (0,), dtype=torch.float32, device=x.device)
        if not rc:
            rc = lib.layer_norm_bwd_dx(stream, dev, code, dy2.data_ptr(), x2.data_ptr(), _ptr(w), _ptr(b),
                                       stats.data_ptr(), dx.data_ptr(), partial.data_ptr(), _ptr(dw), _ptr(db),
                                       *strides, m, n, flags, g)
    if rc:
        raise lib.error(rc, OP + " backward")
    if affine and g > 1:  # with one program the kernels wrote dw and db themselves
        p = w if w is not None else b
        rc = lib.layer_norm_dw(stream, dev, _lib.DTYPE_CODES[p.dtype], partial.data_ptr(), _ptr(dw), _ptr(db),
                               g, n, flags & (_HAS_W | _HAS_B))
        if rc:
            raise lib.error(rc, OP + " backward")
    return dx.view(x.shape), (x.new_empty(0) if dw is None else dw), (x.new_empty(0) if db is None else db)


def _fake(x, weight, bias, eps, relu):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(dy, x, weight, bias, eps, relu):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight) if weight is not None else x.new_empty(0),
            torch.empty_like(bias) if bias is not None else x.new_empty(0))


def _save(ctx, inputs, output):
    x, weight, bias, eps, relu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.eps, ctx.relu = eps, relu


def _grad(ctx, backward, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = backward(dy, x, weight, bias, ctx.eps, ctx.relu)
    return (dx, dw if weight is not None and ctx.needs_input_grad[1] else None,
            db if bias is not None and ctx.needs_input_grad[2] else None, None, None)


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


# --- argument checks -------------------------------------------------------------------------

def _check_eps(eps) -> float:
    if eps is None:
        raise ValueError(f"{OP}: eps must be a positive finite number, got None")
    return check_eps(OP, eps)


def _relu(activation) -> bool:
    try:
        return _ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"{OP}: activation must be None or 'relu', got {activation!r}") from None


def _check_param(x: torch.Tensor, p, name: str) -> None:
    """p: (N,) on x's device, of x's dtype or (for a 16-bit x) fp32."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{OP}: {name} must be a torch.Tensor or None, got {type(p).__name__}")
    if p.dim() != 1 or p.shape[0] != x.shape[-1]:
        shape = f"{p.numel()} elements" if p.dim() == 1 else f"shape {tuple(p.shape)}"
        raise ValueError(f"{OP}: {name} has {shape} but x's last dimension is {x.shape[-1]}")
    if p.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"{OP}: {name} must be {x.dtype} (x's dtype) or torch.float32, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"{OP}: {name} is on {p.device} but x is on {x.device}")


def _check(x, weight, bias) -> None:
    check_input(OP, x)
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            _check_param(x, p, name)
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise TypeError(f"{OP}: bias dtype {bias.dtype} does not match weight dtype {weight.dtype}")


def _direct(x, weight, bias):
    """(Library, device) when the call may launch at once (see _common.direct), else None."""
    fast = direct(x, None)
    if fast is None:
        return None
    n, dev = x.shape[-1], fast[1]
    pdtype = None
    for p in (weight, bias):
        if p is None:
            continue
        if (type(p) not in _PARAM_TYPES or p.dim() != 1 or p.shape[0] != n or p.get_device() != dev
                or p.dtype not in (x.dtype, torch.float32) or (pdtype is not None and p.dtype != pdtype)
                or (p.requires_grad and torch.is_grad_enabled())):
            return None
        pdtype = p.dtype
    return fast


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, activation: Optional[str] = None) -> torch.Tensor:
    """LayerNorm over the last dimension, optionally followed by ReLU in the same kernel.

    x: (..., N) fp16|bf16|fp32; weight, bias: (N,) of x's dtype, or fp32 when x is fp16/bf16
    (both the same dtype), or None; eps > 0; activation: None or "relu".  Returns a contiguous
    tensor of x's shape and dtype.  Strided rows are read in place; a non-contiguous last
    dimension is copied first.  Arithmetic is fp32.
    """
    if type(eps) is not float or not 0.0 < eps < math.inf:
        eps = _check_eps(eps)
    relu = _relu(activation)
    fast = _direct(x, weight, bias)
    if fast is not None:
        return _launch(fast[0], fast[1], x, weight, bias, eps, relu)
    _check(x, weight, bias)
    if is_compiling():
        return _op(x, weight, bias, eps, relu)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _EagerAutograd.apply(x, weight, bias, eps, relu)
    return _forward(x, weight, bias, eps, relu)


def layer_norm_relu(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                    eps: float = 1e-5) -> torch.Tensor:
    """relu(layer_norm(x, weight, bias, eps)) in one kernel: layer_norm(..., activation="relu")."""
    return layer_norm(x, weight, bias, eps, "relu")


__all__ = ["layer_norm", "layer_norm_relu"]
