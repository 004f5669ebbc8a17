"""ada_layer_norm: y = layer_norm(x) * (1 + scale) + shift, the DiT / Flux modulation
(CUDA C++ kernel, kernels/cuda/ada_layer_norm.cu, compiled by NVRTC).

x: (B, S, N) or (..., N) fp16|bf16|fp32, rows may be strided.  scale and shift (same shape and
dtype: x's, or fp32 with a 16-bit x) broadcast in one of three forms:
    per tensor  (N,) or (1, ..., 1, N)
    per sample  (B, 1, ..., 1, N) against x (B, ..., N)
    per token   x's own shape
They may be strided views (e.g. chunks of one modulation tensor): no copy is made.  The
backward gives dx, dscale and dshift; dscale and dshift are summed over the rows that share a
scale row (all rows, a sample's rows, or none), in fp32 and in a fixed order: deterministic.
"""
from __future__ import annotations

import math

import torch

from .. import _lib, reference
from ._common import check_eps, check_input, direct, dtype_code, is_compiling, launch_rows, native, register, \
    row_stride, rows

OP = "ada_layer_norm"
_PARAMS_FP32 = 1   # flags of the kernels: scale and shift stored in fp32
_TENSOR, _SAMPLE, _TOKEN = "per tensor", "per sample", "per token"


def _form(x: torch.Tensor, t: torch.Tensor):
    """Which broadcast form t takes against x, or None."""
    xs, ts = x.shape, t.shape
    if ts == xs:
        return _TOKEN
    if t.dim() == 0 or ts[-1] != xs[-1] or t.dim() > x.dim():
        return None
    if all(d == 1 for d in ts[:-1]):
        return _TENSOR
    if t.dim() == x.dim() >= 3 and ts[0] == xs[0] and all(d == 1 for d in ts[1:-1]):
        return _SAMPLE
    return None


def _rows_of(t: torch.Tensor, form: str, m: int):
    """(t as a tensor whose last dimension is contiguous, S, stride per sample, stride per token):
    the kernel reads the scale row of x's row r at (r / S) * stride_b + (r % S) * stride_s."""
    n = t.shape[-1]
    if form == _TENSOR:
        t = t.reshape(n)
        return (t if t.stride(0) == 1 or n == 1 else t.contiguous()), max(m, 1), 0, 0
    if form == _SAMPLE:
        if t.stride(-1) != 1 and n > 1:
            t = t.contiguous()
        return t, max(m // t.shape[0], 1), (t.stride(0) if t.shape[0] > 1 else 0), 0
    t2 = rows(t)
    return t2, max(m, 1), 0, row_stride(t2)


def _forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference.ada_layer_norm(x, scale, shift, eps)
    return _launch(lib, dev, x, scale, shift, eps, _form(x, scale))


def _launch(lib, dev: int, x, scale, shift, eps: float, form: str) -> torch.Tensor:
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    x2, m, n, stride = launch_rows(x)
    if m == 0 or n == 0:
        return y
    sc, s, sb, ss = _rows_of(scale, form, m)
    sh, _, hb, hs = _rows_of(shift, form, m)
    rc = lib.ada_layer_norm_fwd(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x2.data_ptr(),
                                sc.data_ptr(), sh.data_ptr(), y.data_ptr(), stride, sb, ss, hb, hs, m, n, s, eps,
                                _PARAMS_FP32 if scale.dtype != x.dtype else 0)
    if rc:
        raise lib.error(rc, OP)
    return y


def _dshift_is_dy(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> bool:
    """Per token with scale in dy's dtype, dshift is dy itself: the backward returns it empty
    instead of writing a full tensor's worth of copy, and the gradient formula takes dy."""
    return scale.shape == x.shape and scale.dtype == dy.dtype


def _backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, dscale, dshift (dscale and dshift shaped like scale, in its dtype; dshift empty
    when it is dy itself, see _dshift_is_dy)."""
    dshift_is_dy = _dshift_is_dy(dy, x, scale)
    lib, dev = native(x)
    if lib is None:
        dx, dscale, dshift = reference.ada_layer_norm_backward(dy, x, scale, eps)
        return dx, dscale, (x.new_empty(0) if dshift_is_dy else dshift)
    if x.numel() == 0:
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.zeros_like(scale, memory_format=torch.contiguous_format),
                x.new_empty(0) if dshift_is_dy else torch.zeros_like(scale, memory_format=torch.contiguous_format))
    x2, dy2 = rows(x), rows(dy)
    m, n = x2.shape
    form = _form(x, scale)
    sc, s, sb, ss = _rows_of(scale, form, m)
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    # R rows share one scale row; the J blocks of each group take every J-th of its rows (at
    # least 8 each, about four blocks per SM in all: as many as fit at once for rows up to
    # 4096 wide) and write one fp32 partial row each.
    r = {_TENSOR: m, _SAMPLE: s, _TOKEN: 1}[form]
    groups = m // r
    j = 1 if r == 1 else max(1, min(65535, r // 8, -(-4 * _lib.sm_count(dev) // groups)))
    # One row per scale row (per token; per tensor of one row, per sample of one token): the
    # kernel writes each row's dscale and dshift directly, there is nothing to sum.
    per_row = r == 1
    if per_row:
        dscale = torch.empty((m, n), dtype=scale.dtype, device=x.device)
        dshift = None if dshift_is_dy else torch.empty((m, n), dtype=scale.dtype, device=x.device)
        partial = x.new_empty(0, dtype=torch.float32)
    else:
        dscale = dshift = None
        partial = torch.empty((groups, j, 2, n), dtype=torch.float32, device=x.device)
    rc = lib.ada_layer_norm_bwd(_lib.current_stream(dev), dev, dtype_code(x), dy2.data_ptr(), x2.data_ptr(),
                                sc.data_ptr(), dx.data_ptr(), 0 if dscale is None else dscale.data_ptr(),
                                0 if dshift is None else dshift.data_ptr(), partial.data_ptr(), row_stride(dy2),
                                row_stride(x2), sb, ss, m, n, s, r, eps,
                                _PARAMS_FP32 if scale.dtype != x.dtype else 0, j)
    if rc:
        raise lib.error(rc, OP + " backward")
    if per_row:
        return (dx.view(x.shape), dscale.view(scale.shape),
                x.new_empty(0) if dshift is None else dshift.view(scale.shape))
    sums = partial.sum(1)  # (groups, 2, N): over the J partial rows, in a fixed order
    dscale = torch.empty(scale.shape, dtype=scale.dtype, device=x.device)
    dshift = torch.empty(scale.shape, dtype=scale.dtype, device=x.device)
    dscale.copy_(sums[:, 0].reshape(scale.shape))
    dshift.copy_(sums[:, 1].reshape(scale.shape))
    return dx.view(x.shape), dscale, dshift


def _fake(x, scale, shift, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(dy, x, scale, eps):
    dshift_is_dy = _dshift_is_dy(dy, x, scale)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(scale, memory_format=torch.contiguous_format),
            x.new_empty(0) if dshift_is_dy else torch.empty_like(scale, memory_format=torch.contiguous_format))


def _save(ctx, inputs, output):
    x, scale, shift, eps = inputs
    ctx.save_for_backward(x, scale)
    ctx.eps = eps


def _grad(ctx, backward, dy):
    x, scale = ctx.saved_tensors
    dx, dscale, dshift = backward(dy, x, scale, ctx.eps)
    return dx, dscale, (dy if _dshift_is_dy(dy, x, scale) else dshift), None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


# --- argument checks -------------------------------------------------------------------------

def _check(x, scale, shift) -> str:
    """The broadcast form of scale and shift, or the error that says what is wrong."""
    check_input(OP, x)
    for t, name in ((scale, "scale"), (shift, "shift")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if scale.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"{OP}: scale must be {x.dtype} (x's dtype) or torch.float32, got {scale.dtype}")
    if shift.dtype != scale.dtype:
        raise TypeError(f"{OP}: shift dtype {shift.dtype} does not match scale dtype {scale.dtype}")
    for t, name in ((scale, "scale"), (shift, "shift")):
        if t.device != x.device:
            raise ValueError(f"{OP}: {name} is on {t.device} but x is on {x.device}")
    form = _form(x, scale)
    if form is None:
        raise ValueError(f"{OP}: scale of shape {tuple(scale.shape)} does not broadcast against x of shape "
                         f"{tuple(x.shape)} as (N,) per tensor, (B, 1, N) per sample or (B, S, N) per token")
    if shift.shape != scale.shape:
        raise ValueError(f"{OP}: shift has shape {tuple(shift.shape)} but scale has shape {tuple(scale.shape)}; "
                         "they must have the same shape")
    return form


def ada_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """layer_norm(x, no affine) * (1 + scale) + shift over the last dimension.

    x: (B, S, N) or (..., N) fp16|bf16|fp32; scale, shift: the same shape and dtype, either x's
    dtype or fp32 (for a 16-bit x), shaped (N,) per tensor, (B, 1, N) per sample or x's shape per
    token (strided views are read in place); eps > 0.  Returns a contiguous tensor of x's shape
    and dtype.  Arithmetic is fp32.
    """
    if type(eps) is not float or not 0.0 < eps < math.inf:
        if eps is None:
            raise ValueError(f"{OP}: eps must be a positive finite number, got None")
        eps = check_eps(OP, eps)
    fast = direct(x, None)
    if (fast is not None and type(scale) is torch.Tensor and type(shift) is torch.Tensor
            and scale.dtype == shift.dtype and scale.dtype in (x.dtype, torch.float32) and scale.shape == shift.shape
            and scale.get_device() == fast[1] == shift.get_device()
            and not (torch.is_grad_enabled() and (scale.requires_grad or shift.requires_grad))):
        form = _form(x, scale)
        if form is not None:
            return _launch(fast[0], fast[1], x, scale, shift, eps, form)
    _check(x, scale, shift)
    if is_compiling():
        return _op(x, scale, shift, eps)
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or shift.requires_grad):
        return _EagerAutograd.apply(x, scale, shift, eps)
    return _forward(x, scale, shift, eps)


__all__ = ["ada_layer_norm"]
