"""attention_scores: s = q @ k^T * scale per batch and head (Triton,
kernels/triton/attention_scores.py).

q: (B, [H,] M, D), k: (B, [H,] N, D), fp16|bf16, any batch / head / row strides (views of a
fused QKV projection, expanded k for shared heads), D contiguous (else copied).  The scale
multiplies the fp32 sums before the one rounding.  s: (B, [H,] M, N), contiguous.  The
backward uses torch's batched matmuls: dq = g @ k * scale, dk = g^T @ q * scale.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _lib, reference
from ._common import _TENSORS, _names, is_compiling, native, register

OP = "attention_scores"
DTYPES = (torch.float16, torch.bfloat16)
_DEVICE_TYPES = ("cuda", "cpu", "meta")


def _forward(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    lib, dev = native(q)
    if lib is None:
        return reference.attention_scores(q, k, scale)
    return _launch(lib, dev, q, k, scale)


def _strides(t: torch.Tensor):
    """(t as 4-D with a unit last stride, (batch, head, row) strides); size-1 dimensions get
    stride 0, which the kernel multiplies by index 0 anyway (and which keeps them aligned)."""
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        t = t.contiguous()
    t4 = t if t.dim() == 4 else t.unsqueeze(1)
    return t4, tuple(0 if t4.shape[i] == 1 else t4.stride(i) for i in range(3))


def _launch(lib, dev, q, k, scale):
    m, n, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = torch.empty(q.shape[:-1] + (n,), dtype=q.dtype, device=q.device)
    q4, (sqb, sqh, sqm) = _strides(q)
    k4, (skb, skh, skn) = _strides(k)
    b, h = q4.shape[0], q4.shape[1]
    if s.numel() == 0:
        return s
    rc = lib.attention_scores(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[q.dtype], q4.data_ptr(), k4.data_ptr(),
                              s.data_ptr(), sqb, sqh, sqm, skb, skh, skn, b * h, h, m, n, d, scale)
    if rc:
        raise lib.error(rc, OP)
    return s


def _backward(dy: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.attention_scores_backward(dy, q, k, scale)


def _fake(q, k, scale):
    return q.new_empty(q.shape[:-1] + (k.shape[-2],))


def _backward_fake(dy, q, k, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _save(ctx, inputs, output):
    q, k, scale = inputs
    ctx.save_for_backward(q, k)
    ctx.scale = scale


def _grad(ctx, backward, dy):
    q, k = ctx.saved_tensors
    dq, dk = backward(dy, q, k, ctx.scale)
    return dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None, None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def _check(q, k, scale) -> float:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{OP}: {name} must be {_names(DTYPES)}, got {t.dtype}")
        if t.device.type not in _DEVICE_TYPES:
            raise ValueError(f"{OP}: tensors on {t.device.type!r} are not supported; use CUDA or CPU tensors")
        if t.dim() not in (3, 4):
            raise ValueError(f"{OP}: {name} must be (batch, seq, head_dim) or (batch, heads, seq, head_dim), "
                             f"got shape {tuple(t.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"{OP}: k dtype {k.dtype} does not match q dtype {q.dtype}")
    if k.device != q.device:
        raise ValueError(f"{OP}: k is on {k.device} but q is on {q.device}")
    if k.dim() != q.dim() or k.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"{OP}: q has shape {tuple(q.shape)} and k has shape {tuple(k.shape)}: their batch "
                         f"{'and head ' if q.dim() == 4 else ''}dimensions must match")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{OP}: q has shape {tuple(q.shape)} and k has shape {tuple(k.shape)}: q's head dim "
                         f"({q.shape[-1]}) must equal k's ({k.shape[-1]})")
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{OP}: scale must be a finite number or None (1/sqrt(head_dim)), got {scale!r}")
    return float(scale)


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """q @ k.transpose(-1, -2) * scale, the scale applied before rounding.

    q: (B, [H,] M, D), k: (B, [H,] N, D), fp16|bf16, same batch (and head) sizes; scale: a
    finite number, or None for 1/sqrt(D).  Returns (B, [H,] M, N), contiguous.
    Differentiable in q and k.
    """
    if (type(scale) is float and type(q) in _TENSORS and type(k) in _TENSORS and q.is_cuda
            and q.dtype in DTYPES and k.dtype == q.dtype and q.dim() in (3, 4) and k.dim() == q.dim()
            and q.shape[:-2] == k.shape[:-2] and q.shape[-1] == k.shape[-1] and k.get_device() == q.get_device()
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)) and not is_compiling()
            and math.isfinite(scale)):
        lib = _lib.device_library(q.get_device())
        if lib is not None:
            return _launch(lib, q.get_device(), q, k, scale)
    scale = _check(q, k, scale)
    if is_compiling():
        return _op(q, k, scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _EagerAutograd.apply(q, k, scale)
    return _forward(q, k, scale)


__all__ = ["attention_scores"]
